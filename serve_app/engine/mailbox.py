"""Handing chunks from the engine thread to an asyncio event loop, one wakeup per burst.

An engine iteration emits the chunks of many streams at once. Handing each over with its own
`call_soon_threadsafe` wakes the event loop's thread once per chunk (a write to its self-pipe), and
each wakeup is a thread that wants the GIL while the engine thread is still emitting. A
`LoopMailbox` collects the items posted while a delivery is pending and delivers them all in one
callback, so a burst of chunks costs one wakeup. Items reach each queue in the order posted.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any


class LoopMailbox:
    """Delivers `(queue, item)` pairs posted from any thread into `asyncio.Queue`s of one loop.

    It holds its loop weakly, so a table of mailboxes keyed by loop lets finished loops go."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = weakref.ref(loop)
        self._pending: list[tuple[asyncio.Queue[Any], Any]] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, queue: asyncio.Queue[Any], item: Any) -> None:
        """Queue `item` for `queue`; raises RuntimeError when the loop is closed (nobody listens)."""
        with self._lock:
            self._pending.append((queue, item))
            if self._scheduled:
                return  # the pending delivery takes this item too
            self._scheduled = True
        try:
            loop = self._loop()
            if loop is None:
                raise RuntimeError("the event loop is gone")
            loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:
            with self._lock:
                self._scheduled = False  # the next post tries again, and hears the same
            raise

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending, self._scheduled = self._pending, [], False
        for queue, item in pending:
            queue.put_nowait(item)
