"""Conversation sessions for /contextual_speak: the last turns of each session, kept as codes.

`InMemorySessions` keeps them in this process (LRU over sessions, idle TTL, last N turns each). It is
the store of a one-process server, and the store the Ray `SharedState` deployment holds for every
ingress replica. `session_turn` runs one turn against any `SessionStore`, renewing its lease while
the turn generates and releasing it however the turn ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from cachetools import TTLCache

from serve_app.api.state import SessionStore, TurnLease
from serve_app.engine.types import Segment

__all__ = ["InMemorySessions", "Turn", "session_turn"]


@dataclass
class _Session:
    turns: deque[Segment]
    lease_id: str | None = None
    lease_expires: float = 0.0
    released: asyncio.Event = field(default_factory=asyncio.Event)


class InMemorySessions:
    """Sessions in this process's memory: at most `max_sessions` (least recently used go first),
    forgotten after `ttl_s` idle, each keeping its last `context_turns` turns."""

    def __init__(
        self,
        max_sessions: int,
        ttl_s: float,
        context_turns: int,
        lease_s: float = 30.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions: TTLCache[str, _Session] = TTLCache(maxsize=max_sessions, ttl=ttl_s, timer=timer)
        # Sessions with a turn running, kept also when the LRU or the TTL drops them meanwhile: the
        # turn is still recorded and the next turn still waits for it (as Redis's lease keys do).
        self._leased: dict[str, _Session] = {}
        self._context_turns = context_turns
        self._timer = timer
        self.lease_s = lease_s

    def _open(self, session_id: str) -> _Session:
        """The session, created if new; touching it restarts its idle TTL and makes it most recent."""
        session = (
            self._sessions.get(session_id)
            or self._leased.get(session_id)
            or _Session(deque(maxlen=self._context_turns))
        )
        self._sessions[session_id] = session
        return session

    async def begin_turn(self, session_id: str) -> TurnLease:
        while True:
            session = self._open(session_id)
            now = self._timer()
            if session.lease_id is None or now >= session.lease_expires:
                session.lease_id = uuid.uuid4().hex
                session.lease_expires = now + self.lease_s
                session.released.clear()
                self._forget_expired_leases(now)
                self._leased[session_id] = session
                return TurnLease(session.lease_id, list(session.turns))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(session.released.wait(), max(0.01, session.lease_expires - now))

    def _forget_expired_leases(self, now: float) -> None:
        """Forget the leases of holders gone mid-turn (no end_turn will come for them)."""
        for session_id, session in list(self._leased.items()):
            if now >= session.lease_expires:
                del self._leased[session_id]

    def _held(self, session_id: str, lease_id: str) -> _Session | None:
        """The session while `lease_id` is its lease (evicted from the LRU or not), else None."""
        session = self._leased.get(session_id) or self._sessions.get(session_id)
        return session if session is not None and session.lease_id == lease_id else None

    async def renew_turn(self, session_id: str, lease_id: str) -> bool:
        session = self._held(session_id, lease_id)
        if session is None:
            return False
        session.lease_expires = self._timer() + self.lease_s
        self._leased[session_id] = session
        return True

    async def end_turn(self, session_id: str, lease_id: str, turn: Segment | None) -> int:
        """Record `turn` only while the lease is still this turn's: a session reset (or a lease
        lost) meanwhile must not bring the old call's turn back into the new one."""
        session = self._held(session_id, lease_id)
        if session is None:
            current = self._sessions.get(session_id)
            return len(current.turns) if current is not None else 0
        if turn is not None:
            session.turns.append(turn)
        self._leased.pop(session_id, None)
        self._sessions[session_id] = session  # just used: most recent (back, if the LRU dropped it)
        session.lease_id = None
        session.released.set()
        return len(session.turns)

    async def reset(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        leased = self._leased.pop(session_id, None)
        for dropped in (session, leased):
            if dropped is not None:
                dropped.released.set()  # a waiting turn starts over, on a new empty session
        return session is not None or leased is not None

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)


@dataclass
class Turn:
    """One running turn: the context to generate with, then the turn to record (`record`)."""

    context: list[Segment]
    recorded: Segment | None = None
    turns_kept: int = 0

    def record(self, segment: Segment) -> None:
        self.recorded = segment


@contextlib.asynccontextmanager
async def session_turn(store: SessionStore, session_id: str) -> AsyncIterator[Turn]:
    """Lease the session, yield its context, and end the turn with what was recorded (nothing if
    the body failed or was cancelled). The lease is renewed every third of its length meanwhile."""
    lease = await store.begin_turn(session_id)
    turn = Turn(lease.context)

    async def keep_alive() -> None:
        while True:
            await asyncio.sleep(store.lease_s / 3)
            await store.renew_turn(session_id, lease.lease_id)

    renewer = asyncio.create_task(keep_alive())
    succeeded = False
    try:
        yield turn
        succeeded = True
    finally:
        renewer.cancel()
        # Shielded: a cancelled request (client gone) still releases its lease at once. And started
        # in a context of its own: Ray Serve cancels the handle calls a cancelled request has made
        # (its child requests), and a lost end_turn would make the next turn wait out the lease.
        recorded = turn.recorded if succeeded else None
        end = contextvars.Context().run(
            asyncio.ensure_future, store.end_turn(session_id, lease.lease_id, recorded)
        )
        try:
            turn.turns_kept = await asyncio.shield(end)
        except Exception:
            if succeeded:
                raise  # the turn was generated but could not be recorded: the caller must know
