"""State that every ingress replica must see alike: /contextual_speak sessions and rate-limit buckets.

The API talks to two small protocols. Their backends:

- in this process (`InMemorySessions`, `TokenBucketLimiter`): one process without Ray, and the
  state that the Ray `SharedState` deployment holds for all ingress replicas;
- a Ray deployment handle (`serve_app.deploy.handle_state`): what the ingress replicas use under
  Ray Serve, so a session's turns and a client's budget are the same whichever replica serves it,
  and survive the loss of an ingress replica;
- Redis (`serve_app.api.redis_state`), when `redis_url` is configured: state outside Ray too.

A session turn is a lease: `begin_turn` waits until no other turn of that session is running
(whichever replica runs it), and returns the context; `end_turn` records the new turn and lets the
next one in. A holder renews its lease while it generates, so a replica that dies mid-turn blocks
its session for at most `lease_s`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from serve_app.engine.types import Segment

if TYPE_CHECKING:
    from serve_app.api.settings import ApiSettings

__all__ = ["RateLimiter", "SessionStore", "StateBackends", "StateUnavailableError", "TurnLease", "in_memory_backends", "local_backends"]


@dataclass(frozen=True)
class TurnLease:
    """The right to run one turn of a session: its id, and the session's turns so far (oldest first)."""

    lease_id: str
    context: list[Segment]


class StateUnavailableError(RuntimeError):
    """The shared state cannot be reached now (its replica or server is down); retry later (503)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@runtime_checkable
class SessionStore(Protocol):
    """The last turns of each session (as codes), bounded in number, idle time and turns kept."""

    lease_s: float

    async def begin_turn(self, session_id: str) -> TurnLease:
        """Wait for the session to be free, then lease it; a new or expired session starts empty."""
        ...

    async def renew_turn(self, session_id: str, lease_id: str) -> bool:
        """Extend a running turn's lease; False if it was lost (expired and taken)."""
        ...

    async def end_turn(self, session_id: str, lease_id: str, turn: Segment | None) -> int:
        """Append `turn` (None: nothing, the turn failed), release the lease; returns the turns kept."""
        ...

    async def reset(self, session_id: str) -> bool:
        """Forget the session; True if it existed."""
        ...


@runtime_checkable
class RateLimiter(Protocol):
    """A token bucket per client, shared by every replica that asks."""

    per_minute: int

    async def acquire(self, client: str) -> float:
        """Take one token for `client`: 0.0 when allowed, else the seconds until one is available."""
        ...


@dataclass(frozen=True)
class StateBackends:
    """What an app shares with its sibling replicas; `limiter` is None when rate limits are off."""

    sessions: SessionStore
    limiter: RateLimiter | None


def local_backends(settings: ApiSettings) -> StateBackends:
    """The backends of one process: Redis when `redis_url` is set, else this process's memory."""
    if settings.redis_url:
        from serve_app.api.redis_state import redis_backends

        return redis_backends(settings)
    return in_memory_backends(settings)


def in_memory_backends(settings: ApiSettings) -> StateBackends:
    """Sessions and buckets in this process's memory, bounded as `settings` say."""
    from serve_app.api.auth import TokenBucketLimiter
    from serve_app.api.sessions import InMemorySessions

    sessions = InMemorySessions(
        settings.max_sessions, settings.session_ttl_s, settings.session_context_turns, settings.session_lease_s
    )
    limiter = (
        TokenBucketLimiter(settings.rate_limit_per_minute, settings.burst())
        if settings.rate_limit_per_minute
        else None
    )
    return StateBackends(sessions, limiter)
