"""Sessions and rate limits held by the Ray `SharedState` deployment, reached through its handle.

Every ingress replica gets a `HandleState` over the same one-replica deployment, so a session's
turns and a client's token bucket are the same whichever ingress replica serves a request, and an
ingress replica that dies takes no state with it. A lost or unreachable state replica becomes
`StateUnavailableError` (503 + Retry-After), never a 500 or a hang.

Every request takes a token, and one call through a Serve handle costs milliseconds of router and
replica work, so a burst's calls queue behind each other on the way to first audio. An ingress
replica therefore sends the tokens its requests wait for together: one call in flight, and the
requests that arrive meanwhile go in the next (`HandleState.acquire`). The bucket stays in one
place, so the decisions are the ones one call per request would get.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from ray.serve.handle import DeploymentHandle

from serve_app.api.settings import ApiSettings
from serve_app.api.state import StateBackends, StateUnavailableError, TurnLease, local_backends
from serve_app.deploy.handle_engine import awaited, is_system_failure
from serve_app.engine.types import Segment

__all__ = ["HandleState", "handle_backends"]


MAX_TOKENS_PER_CALL = 512
"""The most token requests one `acquire_many` call carries (the rest go in the next)."""


class HandleState:
    """`SessionStore` and `RateLimiter` over a handle to the `SharedState` deployment."""

    def __init__(
        self,
        handle: DeploymentHandle,
        *,
        lease_s: float,
        per_minute: int,
        burst: int,
        timeout_s: float = 10.0,
    ) -> None:
        self._handle = handle
        self.lease_s = lease_s
        self.per_minute = per_minute
        self._burst = burst
        self._timeout_s = timeout_s
        self._waiting: list[tuple[str, asyncio.Future[float]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def _call(self, method: str, *args: Any, timeout_s: float | None) -> Any:
        response = getattr(self._handle, method).remote(*args)
        try:
            return await asyncio.wait_for(awaited(response), timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise StateUnavailableError(f"shared state did not answer {method} in {timeout_s:g} s") from None
        except Exception as exc:
            if is_system_failure(exc):
                raise StateUnavailableError(
                    f"shared state replica unavailable: {type(exc).__name__}"
                ) from exc
            raise

    async def begin_turn(self, session_id: str) -> TurnLease:
        # Waits while another turn of the session runs: bounded by that turn, not by a timeout here.
        return await self._call("begin_turn", session_id, timeout_s=None)

    async def renew_turn(self, session_id: str, lease_id: str) -> bool:
        return await self._call("renew_turn", session_id, lease_id, timeout_s=self._timeout_s)

    async def end_turn(self, session_id: str, lease_id: str, turn: Segment | None) -> int:
        return await self._call("end_turn", session_id, lease_id, turn, timeout_s=self._timeout_s)

    async def reset(self, session_id: str) -> bool:
        return await self._call("reset", session_id, timeout_s=self._timeout_s)

    async def acquire(self, client: str) -> float:
        """A token for `client` (0.0, or the seconds until one): sent with the other tokens this
        replica's requests wait for, in one call, while no call is in flight; else in the next."""
        answer: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting.append((client, answer))
        if self._sender is None or self._sender.done():
            # In a context of its own: Ray Serve cancels the handle calls a cancelled request has
            # made (its child requests), and this call carries other requests' tokens too.
            self._sender = contextvars.Context().run(asyncio.ensure_future, self._send_tokens())
        return await answer

    async def _send_tokens(self) -> None:
        """Send the waiting token requests, a call at a time, until none waits."""
        while self._waiting:
            batch = self._waiting[:MAX_TOKENS_PER_CALL]
            del self._waiting[:MAX_TOKENS_PER_CALL]
            clients = [client for client, _ in batch]
            try:
                waits = await self._call(
                    "acquire_many", clients, self.per_minute, self._burst, timeout_s=self._timeout_s
                )
            except BaseException as exc:  # every waiting request gets an answer (503), none hangs
                cancelled = StateUnavailableError("shared state call cancelled")
                failure = exc if isinstance(exc, Exception) else cancelled
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, answer), wait in zip(batch, waits, strict=True):
                if not answer.done():  # its request may have gone (client disconnected)
                    answer.set_result(wait)


def handle_backends(handle: DeploymentHandle, settings: ApiSettings) -> StateBackends:
    """The ingress's backends: the shared deployment, or Redis when `redis_url` is configured."""
    if settings.redis_url:
        return local_backends(settings)
    state = HandleState(
        handle,
        lease_s=settings.session_lease_s,
        per_minute=settings.rate_limit_per_minute,
        burst=settings.burst(),
    )
    return StateBackends(state, state if settings.rate_limit_per_minute else None)
