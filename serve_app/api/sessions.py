"""Conversation sessions for /contextual_speak: the last turns of each session, kept as codes.

Sessions live in the ingress process's memory (LRU over sessions, idle TTL). With several ingress
replicas each replica has its own sessions, so a session is only continuous when its requests reach
the same replica (one ingress replica, or sticky routing in front of Ray Serve).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cachetools import TTLCache

from serve_app.engine.types import Segment

__all__ = ["Session", "SessionStore"]


@dataclass
class Session:
    turns: deque[Segment]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one generation at a time per session


class SessionStore:
    def __init__(
        self, max_sessions: int, ttl_s: float, context_turns: int, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self._sessions: TTLCache[str, Session] = TTLCache(maxsize=max_sessions, ttl=ttl_s, timer=timer)
        self._context_turns = context_turns

    def open(self, session_id: str) -> Session:
        """The session, created if new; touching it restarts its idle TTL."""
        session = self._sessions.get(session_id) or Session(deque(maxlen=self._context_turns))
        self._sessions[session_id] = session
        return session

    def reset(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)
