"""The event-loop stall watchdog: a blocked loop gets every thread's stack in the log."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve_app.observability.stall_watchdog import LoopStallWatchdog


def blocking_call_in_the_loop(seconds: float) -> None:
    time.sleep(seconds)


def test_a_blocked_loop_dumps_every_stack_and_is_logged_late(tmp_path, caplog) -> None:
    log = tmp_path / "stacks.txt"

    async def main() -> LoopStallWatchdog:
        with log.open("w") as out:
            dog = LoopStallWatchdog(stall_s=0.3, period_s=0.05, late_s=0.2, file=out)
            dog.start()
            dog.start()  # idempotent
            await asyncio.sleep(0.1)
            blocking_call_in_the_loop(0.8)
            await asyncio.sleep(0.1)
            await dog.stop()
            assert not dog.running
            return dog

    dog = asyncio.run(main())
    stacks = log.read_text()
    assert "blocking_call_in_the_loop" in stacks and "Thread" in stacks
    assert dog.late_beats == 1 and dog.worst_late_s >= 0.5
    assert "event loop was blocked" in caplog.text


def test_a_loop_that_keeps_running_dumps_nothing(tmp_path) -> None:
    log = tmp_path / "stacks.txt"

    async def main() -> LoopStallWatchdog:
        with log.open("w") as out:
            dog = LoopStallWatchdog(stall_s=0.3, period_s=0.05, file=out)
            dog.start()
            for _ in range(20):  # 0.6 s, twice the stall, in short blocking pieces
                blocking_call_in_the_loop(0.01)
                await asyncio.sleep(0.02)
            await dog.stop()
            return dog

    dog = asyncio.run(main())
    time.sleep(0.4)  # a dump left armed after stop would land now
    assert log.read_text() == ""
    assert dog.late_beats == 0


def test_the_heartbeat_must_be_shorter_than_the_stall() -> None:
    with pytest.raises(ValueError):
        LoopStallWatchdog(stall_s=1.0, period_s=1.0)
