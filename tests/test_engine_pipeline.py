"""Two decode steps in flight: step N+1 is launched before step N's codes are read, so end of audio is
seen one step late (the extra frame is discarded), lengths stop a slot at its last launch, and a step's
codes only reach the sequences it was launched for, even when their slot is reused meanwhile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.engine.loop import EngineLoop, SilenceGuard
from serve_app.engine.runner import StepOutput
from serve_app.engine.sequence import ChunkPolicy
from serve_app.engine.types import FinishReason
from tests import support_engine as se

pytestmark = pytest.mark.usefixtures("one_thread")

FS = 1920


def trace(loop: EngineLoop) -> list[tuple[str, int]]:
    """Record ("launch", step) and ("fetch", step) as the loop calls the runner."""
    log: list[tuple[str, int]] = []
    runner = loop.runner
    step, fetch = runner.step, runner.fetch

    def traced_step(rows: int, positions: int) -> StepOutput:
        out = step(rows, positions)
        log.append(("launch", out.index))
        return out

    def traced_fetch(out: StepOutput | None, audio):  # type: ignore[no-untyped-def]
        if out is not None:
            log.append(("fetch", out.index))
        return fetch(out, audio)

    runner.step, runner.fetch = traced_step, traced_fetch  # type: ignore[method-assign]
    return log


def test_next_step_is_launched_before_the_previous_one_is_fetched() -> None:
    loop = se.make_loop()
    log = trace(loop)
    got = se.sequence(se.request("pipelined", frames=5, seed=3))
    loop.submit(got.seq)
    loop.run_once()
    assert log == [("launch", 0)] and not got.chunks  # nothing waited for yet
    loop.run_once()
    assert log[1:] == [("launch", 1), ("fetch", 0)]
    assert [c.frames for c in got.chunks] == [1]  # first audio as early as with one step in flight
    se.run_until_idle(loop)
    assert log == [
        ("launch", 0),
        ("launch", 1), ("fetch", 0),
        ("launch", 2), ("fetch", 1),
        ("launch", 3), ("fetch", 2),
        ("launch", 4), ("fetch", 3),
        ("fetch", 4),
    ]  # fmt: skip
    np.testing.assert_array_equal(got.codes, se.run_alone(got.seq.request).codes)


def test_end_of_audio_seen_a_step_late_drops_the_extra_frame_and_spares_the_neighbour() -> None:
    chunks = ChunkPolicy(1, 4)
    ending_req = se.request("ends early", frames=12, seed=41)
    other_req = se.request("keeps talking", frames=9, seed=42)
    solo_ending, solo_other = (se.run_alone(r, chunks=chunks).codes for r in (ending_req, other_req))
    # The tightest history ring the loop accepts: the extra frame must not overwrite undecoded ones.
    loop = se.make_loop(n_slots=2, chunks=chunks, history=2 * chunks.largest + 2)
    se.force_end_of_audio(loop, at_frame=3, seed=41)
    ending, other = se.sequence(ending_req), se.sequence(other_req)
    loop.submit(ending.seq)
    loop.submit(other.seq)
    while ending.seq.finish_reason is None:
        loop.run_once()
    slot = ending.seq.slot
    assert not ending.seq.finished and int(loop.runner.positions[slot]) == -1  # stopped as soon as seen
    se.run_until_idle(loop)

    assert ending.seq.steps == 3 + 2  # the end-of-audio step and the one launched before it was seen
    assert int(loop.runner.frame[slot]) == 3 + 2  # and no step after those for its row
    assert [c.frames for c in ending.chunks] == [1, 2]
    assert ending.chunks[-1].finish_reason is FinishReason.END_OF_AUDIO
    np.testing.assert_array_equal(ending.codes, solo_ending[:3])
    assert ending.pcm.shape == (3 * FS,)
    np.testing.assert_allclose(
        ending.pcm, se.codec().decode(torch.as_tensor(ending.codes)).numpy(), atol=1e-5
    )
    np.testing.assert_array_equal(other.codes, solo_other)
    assert other.seq.steps == 9 and other.chunks[-1].finish_reason is FinishReason.LENGTH
    assert loop.scheduler.free_slots == 2 and bool((loop.runner.positions < 0).all())


def test_no_step_is_launched_past_a_length_and_the_slot_stops_at_its_last_launch() -> None:
    loop = se.make_loop(n_slots=2)
    short, long = (
        se.sequence(se.request("short", frames=2, seed=1)),
        se.sequence(se.request("long", frames=6)),
    )
    loop.submit(short.seq)
    loop.submit(long.seq)
    loop.run_once()
    assert int(loop.runner.positions[short.seq.slot]) >= 0
    loop.run_once()  # short's last step is launched (its codes are not read yet)
    assert short.seq.steps == 2 and short.seq.finish_reason is None
    assert int(loop.runner.positions[short.seq.slot]) == -1 and int(loop.runner.positions[long.seq.slot]) >= 0
    se.run_until_idle(loop)
    assert short.seq.steps == 2 and short.codes.shape == (2, 32)
    assert long.seq.steps == 6 and loop.steps == 6


@pytest.mark.parametrize("reason", ["end_of_audio", "cancel", "silence"])
def test_a_slot_reused_while_its_old_sequence_is_in_flight_gets_none_of_its_results(reason: str) -> None:
    """One slot: the first sequence stops while a step with its row is in flight, the next one is
    admitted into the slot before that step's codes are read, and must get its solo codes only."""
    silence = SilenceGuard(rms=1e3, seconds=0.08) if reason == "silence" else se.NO_SILENCE_GUARD  # 1 frame
    old_req, new_req = (
        se.request("first voice", frames=12, seed=51),
        se.request("second voice", frames=4, seed=52),
    )
    solo = se.run_alone(new_req, n_slots=1, silence=silence).codes
    loop = se.make_loop(n_slots=1, silence=silence)
    log = trace(loop)
    if reason == "end_of_audio":
        se.force_end_of_audio(loop, at_frame=1, seed=51)  # frame 0 is already sent: it ends with nothing left
    old, new = se.sequence(old_req), se.sequence(new_req)
    loop.submit(old.seq)
    loop.submit(new.seq)
    loop.run_once()
    loop.run_once()
    if reason == "cancel":
        loop.cancel(old.seq)
    while new.seq.slot is None:
        loop.run_once()
    last_old_step = old.seq.steps - 1
    assert log.index(("launch", last_old_step + 1)) < log.index(("fetch", last_old_step))  # reused in flight
    se.run_until_idle(loop)

    assert new.seq.slot == old.seq.slot == 0
    np.testing.assert_array_equal(new.codes, solo)
    expected = {"end_of_audio": FinishReason.END_OF_AUDIO, "cancel": FinishReason.CANCELLED}
    assert old.seq.finish_reason is expected.get(reason, FinishReason.SILENCE)
    assert old.codes.shape == (1, 32) and old.chunks[-1].is_last is (reason != "cancel")
    assert loop.scheduler.free_slots == 1 and bool((loop.runner.positions < 0).all())


@pytest.mark.parametrize("end", ["length", "end_of_audio"])
def test_a_streams_rest_is_decoded_behind_its_last_step(end: str) -> None:
    """The rest of a stream whose last step (its length) was just launched is decoded behind that
    step: the last chunk is handed over, and the slot freed, in the iteration that fetches the step.
    A chunk launched in the same iteration before it is not taken for the last one."""
    chunks = ChunkPolicy(first_frames=1, frames=2)
    req = se.request("ends on its length", frames=4, seed=61)
    solo = se.run_alone(req, chunks=chunks)
    loop = se.make_loop(n_slots=1, chunks=chunks)
    if end == "end_of_audio":
        se.force_end_of_audio(loop, at_frame=3, seed=61)  # the last step's frame ends the audio
    log = trace(loop)
    got = se.sequence(req)
    loop.submit(got.seq)
    while ("fetch", 3) not in log:
        loop.run_once()
    assert got.chunks and got.chunks[-1].is_last  # in the iteration that read the last step
    assert loop.scheduler.free_slots == 1
    assert [c.frames for c in got.chunks] == ([1, 2, 1] if end == "length" else [1, 2, 0])
    assert [c.is_last for c in got.chunks] == [False, False, True]
    expected = FinishReason.LENGTH if end == "length" else FinishReason.END_OF_AUDIO
    assert got.chunks[-1].finish_reason is expected
    kept = 4 if end == "length" else 3
    np.testing.assert_array_equal(got.codes, solo.codes[:kept])
    np.testing.assert_allclose(got.pcm, solo.pcm[: kept * FS], atol=1e-5)
    assert not loop.run_once()  # nothing left to do


@pytest.mark.parametrize("on", [True, False])
def test_a_one_launch_frame_waits_for_a_first_chunk_queued_before_it_only_when_asked(
    on: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `FIRST_AUDIO_BEFORE_ONE_LAUNCH_FRAME`, the step launched right after a stream's first-chunk
    decode waits for it (where its frame is one persistent launch): once a stream, and never for its
    later chunks."""
    from serve_app.engine import loop as engine_loop

    monkeypatch.setattr(engine_loop, "FIRST_AUDIO_BEFORE_ONE_LAUNCH_FRAME", on)
    loop = se.make_loop()
    log = trace(loop)
    runner = loop.runner
    runner.one_launch_frame = lambda rows: rows == 1  # type: ignore[method-assign]
    runner.step_after_audio = lambda: log.append(("wait for audio", runner.steps_launched))  # type: ignore[method-assign]
    for name in ("first", "second"):
        got = se.sequence(se.request(name, frames=12, seed=3))
        loop.submit(got.seq)
        se.run_until_idle(loop)
        assert got.chunks, name
    waits = [entry for entry in log if entry[0] == "wait for audio"]
    assert [log[log.index(w) + 1][0] for w in waits] == ["launch"] * len(waits)  # right before a step
    assert len(waits) == (2 if on else 0)  # one a stream: its first chunk's
    if on:
        assert waits[0] == ("wait for audio", 1)  # the step after the first (whose frame is the first chunk)
