"""Scheduler: bounded admission, lowest-slot-first packing, prefill budget, cancellation, slot reuse,
slots shared among callers."""

from __future__ import annotations

import pytest
import torch

from serve_app.engine.scheduler import Scheduler
from serve_app.engine.sequence import ChunkPolicy, Sequence, SequenceStatus
from serve_app.engine.types import EngineOverloadedError, FinishReason, GenerationRequest


def seq(rows: int = 5, caller: str | None = None) -> Sequence:
    tokens = torch.zeros(rows, 33, dtype=torch.long)
    return Sequence(
        GenerationRequest(text="x", caller=caller),
        tokens,
        torch.ones_like(tokens, dtype=torch.bool),
        0,
        lambda _: None,
        max_frames=10,
    )


def test_overload_beyond_free_slots_plus_waiting_queue() -> None:
    s = Scheduler(n_slots=2, max_waiting=1)
    for _ in range(3):  # two can take the free slots, one may wait
        s.add(seq())
    with pytest.raises(EngineOverloadedError, match="retry later"):
        s.add(seq())
    first, _ = s.admit()
    with pytest.raises(EngineOverloadedError):  # one still waits, no slot is free
        s.add(seq())
    s.finish(first, FinishReason.END_OF_AUDIO)
    s.add(seq())  # a freed slot makes room again


def test_admission_fifo_into_lowest_free_slots() -> None:
    s = Scheduler(n_slots=4, max_waiting=8)
    seqs = [seq() for _ in range(4)]
    for x in seqs:
        s.add(x)
    assert [x.slot for x in s.admit()] == [0, 1, 2, 3]
    assert all(x.status is SequenceStatus.RUNNING for x in seqs)
    s.finish(seqs[2], FinishReason.LENGTH)
    s.finish(seqs[0], FinishReason.END_OF_AUDIO)
    assert s.batch_rows() == 4
    late = [seq(), seq()]
    for x in late:
        s.add(x)
    assert [x.slot for x in s.admit()] == [0, 2]
    s.finish(seqs[3], FinishReason.LENGTH)
    assert s.batch_rows() == 3  # rows shrink when the top slot leaves


def test_finish_is_idempotent_and_keeps_first_reason() -> None:
    s = Scheduler(n_slots=1)
    x = seq()
    s.add(x)
    s.admit()
    s.finish(x, FinishReason.SILENCE)
    s.finish(x, FinishReason.CANCELLED)
    assert x.finish_reason is FinishReason.SILENCE and s.free_slots == 1
    assert s.batch_rows() == 0


def test_prefill_row_budget_splits_admission_but_never_starves_a_long_prompt() -> None:
    s = Scheduler(n_slots=8, max_waiting=8, max_prefill_rows=100)
    long_one, short = seq(rows=300), [seq(rows=30) for _ in range(5)]
    for x in [long_one, *short]:
        s.add(x)
    assert s.admit() == [long_one]  # over budget alone, admitted alone
    assert s.admit() == short[:3]  # 30 rows x 3 <= 100 < 30 x 4
    assert s.admit() == short[3:]


def test_cancelled_waiting_requests_are_dropped_and_running_ones_reported() -> None:
    s = Scheduler(n_slots=1, max_waiting=4)
    running, waiting = seq(), seq()
    s.add(running)
    s.add(waiting)
    s.admit()
    waiting.cancel()
    running.cancel()
    out = s.cancelled()
    assert set(out) == {running, waiting}
    assert waiting.finished and waiting.finish_reason is FinishReason.CANCELLED
    assert not running.finished  # the engine loop frees its slot and decoder state
    assert s.counts() == {"running": 1, "waiting": 0, "slots": 1}


def test_a_drained_scheduler_refuses_new_sequences() -> None:
    """Drained (the engine closed, or its loop failed): a sequence added afterwards would never run."""
    s = Scheduler(n_slots=1, max_waiting=1)
    s.add(seq())
    assert len(s.drain()) == 1
    with pytest.raises(RuntimeError, match="stopped"):
        s.add(seq())
    assert s.counts()["waiting"] == 0


def test_chunk_policy() -> None:
    p = ChunkPolicy(first_frames=2, frames=6)
    assert [p.target(i) for i in range(3)] == [2, 6, 6] and p.largest == 6 and p.sizes == (2, 6)
    ramp = ChunkPolicy(first_frames=1, frames=8, ramp=True)
    assert [ramp.target(i) for i in range(6)] == [1, 2, 4, 8, 8, 8] and ramp.sizes == (1, 2, 4, 8)
    odd = ChunkPolicy(first_frames=3, frames=10, ramp=True)
    assert [odd.target(i) for i in range(4)] == [3, 6, 10, 10] and odd.sizes == (3, 6, 10)
    with pytest.raises(ValueError):
        ChunkPolicy(0, 4)


@pytest.mark.timeout(10)
def test_chunk_policy_sizes_with_a_first_chunk_larger_than_the_later_ones() -> None:
    """A ramped policy whose first chunk is the larger (the engine's default ramp with, say,
    `first_chunk_frames=4, chunk_frames=2`) used to spin for ever listing its sizes, so the engine
    never started."""
    ramp = ChunkPolicy(first_frames=4, frames=2, ramp=True)
    assert ramp.sizes == (2, 4) and [ramp.target(i) for i in range(3)] == [4, 4, 4]
    aligned = ChunkPolicy(first_frames=5, frames=1, ramp=True, align=True)
    assert aligned.sizes == (1, 2, 4, 5)
    assert ChunkPolicy(first_frames=1, frames=8, ramp=True, align=True).sizes == (1, 2, 4, 8)


def test_a_caller_with_a_long_queue_does_not_hold_back_another_callers_request() -> None:
    """One caller queues six requests, another one after them: the first free slot after the
    heavy caller's running one goes to the light caller (served least recently: never), and each
    caller's own requests keep their order."""
    s = Scheduler(n_slots=1, max_waiting=16)
    heavy = [seq(caller="key_heavy") for _ in range(6)]
    light = seq(caller="key_light")
    for q in [*heavy, light]:
        s.add(q)
    assert s.admit() == [heavy[0]]  # alone running: first come, first served
    s.finish(heavy[0], FinishReason.END_OF_AUDIO)
    assert s.admit() == [light]  # both run none; the heavy caller waited longer, but was served last
    s.finish(light, FinishReason.END_OF_AUDIO)
    order = []
    for _ in range(5):
        (admitted,) = s.admit()
        order.append(admitted)
        s.finish(admitted, FinishReason.END_OF_AUDIO)
    assert order == heavy[1:]
    assert s.counts() == {"running": 0, "waiting": 0, "slots": 1}


def test_slots_go_to_the_caller_running_fewest_then_to_the_one_served_least_recently() -> None:
    s = Scheduler(n_slots=4, max_waiting=16)
    a = [seq(caller="a") for _ in range(4)]
    for q in a[:2]:
        s.add(q)
    assert s.admit() == a[:2]  # a runs two
    b = [seq(caller="b") for _ in range(3)]
    c = seq(caller="c")
    for q in [*a[2:], *b, c]:
        s.add(q)
    # free slots: 2. b and c run none; b waited longer, then c; a (two running) waits
    assert s.admit() == [b[0], c]
    s.finish(a[0], FinishReason.END_OF_AUDIO)
    # a runs one, b one, c one: a tie, to the caller served least recently (a, before b and c)
    assert s.admit() == [a[2]]
    s.finish(b[0], FinishReason.END_OF_AUDIO)
    s.finish(c, FinishReason.END_OF_AUDIO)
    # two free slots; b runs none, then one, and a two: both go to b (c has nothing waiting)
    assert s.admit() == [b[1], b[2]]


def test_two_callers_take_turns_at_one_slot() -> None:
    s = Scheduler(n_slots=1, max_waiting=16)
    x = [seq(caller="x") for _ in range(3)]
    y = [seq(caller="y") for _ in range(3)]
    for q in [*x, *y]:
        s.add(q)
    order = []
    for _ in range(6):
        (admitted,) = s.admit()
        order.append(admitted)
        s.finish(admitted, FinishReason.END_OF_AUDIO)
    assert order == [x[0], y[0], x[1], y[1], x[2], y[2]]


def test_anonymous_requests_are_one_caller_and_keep_arrival_order() -> None:
    s = Scheduler(n_slots=2, max_waiting=8)
    seqs = [seq() for _ in range(4)]
    for q in seqs:
        s.add(q)
    assert s.admit() == seqs[:2]
    for q in seqs[:2]:
        s.finish(q, FinishReason.END_OF_AUDIO)
    assert s.admit() == seqs[2:]


def test_cancelled_requests_leave_a_callers_share() -> None:
    """A caller whose waiting requests are all cancelled no longer counts as waiting, and a
    finished stream no longer counts as running: the next choice is by the callers left."""
    s = Scheduler(n_slots=1, max_waiting=8)
    first, gone, kept = seq(caller="a"), seq(caller="b"), seq(caller="a")
    for q in (first, gone, kept):
        s.add(q)
    assert s.admit() == [first]
    gone.cancel()
    assert s.cancelled() == [gone]
    s.finish(first, FinishReason.END_OF_AUDIO)
    assert s.admit() == [kept]
    assert s.counts()["waiting"] == 0


def test_a_callers_bookkeeping_goes_when_it_has_nothing_waiting_or_running() -> None:
    """Thousands of distinct callers (addresses) passing through leave nothing behind: what the
    scheduler keeps per caller is as large as the callers present."""
    s = Scheduler(n_slots=2, max_waiting=8)
    for i in range(2000):
        mine, cancelled = seq(caller=f"addr_{i}"), seq(caller=f"addr_{i}x")
        s.add(mine)
        s.add(cancelled)
        cancelled.cancel()
        s.cancelled()
        (admitted,) = s.admit()
        s.finish(admitted, FinishReason.END_OF_AUDIO)
    assert (s._waiting_by_caller, s._running_by_caller, s._served) == ({}, {}, {})
