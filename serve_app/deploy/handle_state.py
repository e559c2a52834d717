"""Sessions and rate limits held by the Ray `SharedState` deployment, reached through its handle.

Every ingress replica gets a `HandleState` over the same one-replica deployment, so a session's
turns and a client's token bucket are the same whichever ingress replica serves a request, and an
ingress replica that dies takes no state with it. A lost or unreachable state replica becomes
`StateUnavailableError` (503 + Retry-After), never a 500 or a hang.

Every request takes a token, and one call through a Serve handle costs milliseconds of router and
replica work, so a burst's calls queue behind each other on the way to first audio. An ingress
replica therefore sends the tokens its requests wait for together: one call in flight, and the
requests that arrive meanwhile go in the next (`HandleState.acquire`). The bucket stays in one
place, and every request takes its token from it.

A client whose last answer left it tokens does not wait for the call at all: each answer says how
many tokens its client has left, the replica keeps that credit for `CREDIT_TTL_S` less the
requests it has admitted on it since, and while the credit lasts a request is admitted at once,
its token sent in the next call as before. A client near its limit (within `credit_reserve` of its
burst) has no credit, so its requests wait for the bucket's own answer. The bucket is only ever
read after takes and refills only add, so one ingress replica never admits more than the bucket
would; with several, a replica's credit overstates the bucket by the others' takes since its last
answer, so a client passes its limit only if the other replicas admit more than the reserve of its
requests in that time.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import Counter, OrderedDict
from typing import Any

from ray.serve.handle import DeploymentHandle

from serve_app.api.settings import ApiSettings
from serve_app.api.state import StateBackends, StateUnavailableError, TurnLease, local_backends
from serve_app.deploy.handle_engine import awaited, is_system_failure
from serve_app.engine.types import Segment

__all__ = ["HandleState", "handle_backends"]


MAX_TOKENS_PER_CALL = 512
"""The most token requests one `acquire_many` call carries (the rest go in the next)."""

CREDIT_TTL_S = 1.0
"""How long a client's credit (the tokens the bucket last said it had left) admits its requests
without waiting for the bucket's answer."""

CREDIT_RESERVE_FRACTION = 0.25
"""The part of a client's burst never spent on credit (`credit_reserve`)."""


def credit_reserve(burst: int) -> float:
    """Tokens a client's credit must exceed before a request is admitted on it: near its limit every
    request waits for the bucket, so the other ingress replicas' takes since this replica's last
    answer (which its credit does not know of) cannot carry the client past its limit unless they
    number more than this. A client taking turns between two replicas would need that many in a row
    on the other one."""
    return max(2.0, CREDIT_RESERVE_FRACTION * burst)


MAX_CREDITS = 100_000
"""Clients whose credit a replica keeps (the most recently answered; the rest wait for answers)."""


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
        self._reserve = credit_reserve(burst)
        self._timeout_s = timeout_s
        # Token requests to send; a request admitted on credit waits for no answer (None).
        self._waiting: list[tuple[str, asyncio.Future[float] | None]] = []
        self._sender: asyncio.Task[None] | None = None
        self._credit: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client: (tokens, when)
        self._unanswered: Counter[str] = Counter()  # each client's token requests not answered yet

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
        replica's requests wait for, in one call, while no call is in flight; else in the next.
        While the client has credit, 0.0 at once (its token still goes in the call)."""
        tokens, when = self._credit.get(client, (0.0, 0.0))
        on_credit = tokens >= 1.0 + self._reserve and time.monotonic() - when <= CREDIT_TTL_S
        answer = None if on_credit else asyncio.get_running_loop().create_future()
        if on_credit:
            self._credit[client] = (tokens - 1.0, when)
        self._waiting.append((client, answer))
        self._unanswered[client] += 1
        if self._sender is None or self._sender.done():
            # In a context of its own: Ray Serve cancels the handle calls a cancelled request has
            # made (its child requests), and this call carries other requests' tokens too.
            self._sender = contextvars.Context().run(asyncio.ensure_future, self._send_tokens())
        return 0.0 if answer is None else await answer

    def _answered(self, client: str, left: float | None) -> None:
        """One of `client`'s token requests answered: its credit is what the bucket has left less
        the client's requests still unanswered (each will take one); None: no answer, no credit."""
        self._unanswered[client] -= 1
        pending = self._unanswered[client]
        if pending <= 0:
            del self._unanswered[client]
        if left is None or left - pending < 1.0 + self._reserve:
            self._credit.pop(client, None)
            return
        self._credit[client] = (left - pending, time.monotonic())
        self._credit.move_to_end(client)
        if len(self._credit) > MAX_CREDITS:
            self._credit.popitem(last=False)

    async def _send_tokens(self) -> None:
        """Send the waiting token requests, a call at a time, until none waits."""
        while self._waiting:
            batch = self._waiting[:MAX_TOKENS_PER_CALL]
            del self._waiting[:MAX_TOKENS_PER_CALL]
            clients = [client for client, _ in batch]
            try:
                answers = await self._call(
                    "acquire_many", clients, self.per_minute, self._burst, timeout_s=self._timeout_s
                )
            except BaseException as exc:  # every waiting request gets an answer (503), none hangs
                cancelled = StateUnavailableError("shared state call cancelled")
                failure = exc if isinstance(exc, Exception) else cancelled
                for client, answer in batch:
                    self._answered(client, None)
                    if answer is not None and not answer.done():
                        answer.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (client, answer), (wait, left) in zip(batch, answers, strict=True):
                self._answered(client, left)
                if answer is not None and not answer.done():  # its request may have gone
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
