"""The engine thread's handoff of chunks to asyncio loops (`serve_app.engine.mailbox`)."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

import pytest

from serve_app.engine.mailbox import LoopMailbox


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts its cross-thread wakeups."""

    wakeups = 0

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:
        self.wakeups += 1
        return super().call_soon_threadsafe(*args, **kwargs)


def test_a_burst_posted_from_another_thread_arrives_in_order_with_few_wakeups() -> None:
    loop = CountingLoop()
    try:
        box = LoopMailbox(loop)
        queues: list[asyncio.Queue[int]] = []

        async def main() -> list[list[int]]:
            queues.extend(asyncio.Queue() for _ in range(8))
            poster = threading.Thread(target=lambda: [box.post(q, i) for i in range(50) for q in queues])
            poster.start()
            got = [[await q.get() for _ in range(50)] for q in queues]
            await asyncio.to_thread(poster.join)
            return got

        got = loop.run_until_complete(main())
    finally:
        loop.close()
    assert got == [list(range(50))] * 8  # every item, each queue in the order posted
    assert 1 <= loop.wakeups <= 40  # not one per item: items posted while a delivery was pending rode along


def test_a_closed_loop_refuses_every_post_so_each_sender_can_stop() -> None:
    loop = asyncio.new_event_loop()
    box = LoopMailbox(loop)
    loop.close()
    for _ in range(3):  # not only the first: a failed delivery leaves nothing scheduled
        with pytest.raises(RuntimeError):
            box.post(asyncio.Queue(), "chunk")


def test_a_finished_loop_is_not_kept_alive_by_its_mailbox() -> None:
    loop = asyncio.new_event_loop()
    box = LoopMailbox(loop)
    loop.close()
    del loop
    gc.collect()
    with pytest.raises(RuntimeError, match="gone"):
        box.post(asyncio.Queue(), "chunk")
