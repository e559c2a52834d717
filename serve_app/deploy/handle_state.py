"""Sessions and rate limits held by the Ray `SharedState` deployment, reached through its handle.

Every ingress replica gets a `HandleState` over the same one-replica deployment, so a session's
turns and a client's token bucket are the same whichever ingress replica serves a request, and an
ingress replica that dies takes no state with it. A lost or unreachable state replica becomes
`StateUnavailableError` (503 + Retry-After), never a 500 or a hang.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray.serve.handle import DeploymentHandle

from serve_app.api.settings import ApiSettings
from serve_app.api.state import StateBackends, StateUnavailableError, TurnLease, local_backends
from serve_app.deploy.handle_engine import awaited, is_system_failure
from serve_app.engine.types import Segment

__all__ = ["HandleState", "handle_backends"]


class HandleState:
    """`SessionStore` and `RateLimiter` over a handle to the `SharedState` deployment."""

    def __init__(
        self, handle: DeploymentHandle, *, lease_s: float, per_minute: int, burst: int, timeout_s: float = 10.0
    ) -> None:
        self._handle = handle
        self.lease_s = lease_s
        self.per_minute = per_minute
        self._burst = burst
        self._timeout_s = timeout_s

    async def _call(self, method: str, *args: Any, timeout_s: float | None) -> Any:
        response = getattr(self._handle, method).remote(*args)
        try:
            return await asyncio.wait_for(awaited(response), timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise StateUnavailableError(f"shared state did not answer {method} in {timeout_s:g} s") from None
        except Exception as exc:
            if is_system_failure(exc):
                raise StateUnavailableError(f"shared state replica unavailable: {type(exc).__name__}") from exc
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
        return await self._call("acquire", client, self.per_minute, self._burst, timeout_s=self._timeout_s)


def handle_backends(handle: DeploymentHandle, settings: ApiSettings) -> StateBackends:
    """The ingress's backends: the shared deployment, or Redis when `redis_url` is configured."""
    if settings.redis_url:
        return local_backends(settings)
    state = HandleState(
        handle, lease_s=settings.session_lease_s, per_minute=settings.rate_limit_per_minute, burst=settings.burst()
    )
    return StateBackends(state, state if settings.rate_limit_per_minute else None)
