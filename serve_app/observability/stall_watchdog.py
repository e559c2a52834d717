"""Every thread's stack in the process's log when its event loop stops running.

A replica whose event loop is blocked answers nothing, Ray's health check included, and after
`health_check_timeout_s` Ray replaces it without saying why. The watchdog re-arms
`faulthandler.dump_traceback_later` from the event loop once per `period_s`; that timer runs on a
C thread, so if the loop does not come back within `stall_s`, the Python stack of every thread is
written to stderr (the replica's log), even while the blocking thread holds the GIL. A loop that
comes back late is also logged, with how late it was.

One per process: `faulthandler` has a single pending dump.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import sys
from typing import TextIO

logger = logging.getLogger(__name__)

DEFAULT_STALL_S = 10.0
"""A loop blocked this long gets every thread's stack dumped."""


class LoopStallWatchdog:
    def __init__(
        self,
        stall_s: float = DEFAULT_STALL_S,
        period_s: float = 1.0,
        late_s: float = 1.0,
        file: TextIO | None = None,
    ) -> None:
        """`late_s`: a heartbeat this much past its time is logged as a warning."""
        if not 0 < period_s < stall_s:
            raise ValueError("the heartbeat period must be positive and shorter than the stall")
        self.stall_s = stall_s
        self.period_s = period_s
        self.late_s = late_s
        self.file = file
        self.late_beats = 0
        self.worst_late_s = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start beating on the running event loop (idempotent)."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._beat(), name="loop-stall-watchdog")

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                faulthandler.dump_traceback_later(self.stall_s, repeat=False, file=self.file or sys.stderr)
                before = loop.time()
                await asyncio.sleep(self.period_s)
                late = loop.time() - before - self.period_s
                if late > self.late_s:
                    self.late_beats += 1
                    self.worst_late_s = max(self.worst_late_s, late)
                    logger.warning("event loop was blocked for %.1f s", late)
        finally:
            faulthandler.cancel_dump_traceback_later()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
