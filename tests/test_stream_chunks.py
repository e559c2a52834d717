"""Streaming: chunk sizes, exact audio (stream == whole decode == reference generator), the end-of-audio
frame at any point of a chunk, the silence guard, and cancellation freeing the slot mid-way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.engine.generator import Generator
from serve_app.engine.loop import SilenceGuard
from serve_app.engine.sequence import ChunkPolicy
from serve_app.engine.types import FinishReason
from tests import support_engine as se

pytestmark = pytest.mark.usefixtures("one_thread")

FS = 1920


def test_stream_chunks_and_audio_equal_the_reference_generator() -> None:
    req = se.request("streaming words", frames=10, seed=5)
    got = se.run_alone(req, chunks=ChunkPolicy(first_frames=1, frames=4))
    assert [c.frames for c in got.chunks] == [1, 4, 4, 1]
    assert [c.is_last for c in got.chunks] == [False, False, False, True]
    assert [c.finish_reason for c in got.chunks] == [None, None, None, FinishReason.LENGTH]
    assert all(c.pcm.dtype == np.float32 and c.pcm.shape == (c.frames * FS,) for c in got.chunks)

    ref = Generator(se.model(), se.tokenizer(), se.codec(), max_batch_size=1).generate([req])[0]
    np.testing.assert_array_equal(got.codes, ref.codes)
    np.testing.assert_allclose(got.pcm, ref.pcm, atol=1e-5)
    assert np.abs(ref.pcm).max() > 1e-3  # real audio, not silence

    other = se.run_alone(req, chunks=ChunkPolicy(first_frames=2, frames=3))
    assert [c.frames for c in other.chunks] == [2, 3, 3, 2]
    np.testing.assert_array_equal(other.codes, got.codes)
    np.testing.assert_allclose(other.pcm, got.pcm, atol=1e-5)


def test_ramped_chunks_double_up_to_the_chunk_size_with_the_same_audio() -> None:
    req = se.request("streaming words", frames=17, seed=5)
    plain = se.run_alone(req, chunks=ChunkPolicy(first_frames=1, frames=4))
    ramped = se.run_alone(req, chunks=ChunkPolicy(first_frames=1, frames=4, ramp=True))
    assert [c.frames for c in ramped.chunks] == [1, 2, 4, 4, 4, 2]
    np.testing.assert_array_equal(ramped.codes, plain.codes)
    np.testing.assert_allclose(ramped.pcm, plain.pcm, atol=1e-5)


@pytest.mark.parametrize(
    "eos_at, sizes",
    [(0, [0]), (1, [1, 0]), (3, [1, 2]), (5, [1, 4]), (7, [1, 4, 2])],
    ids=["first-frame", "after-first-chunk", "mid-chunk", "chunk-boundary", "after-chunks"],
)
def test_end_of_audio_frame_ends_the_stream_without_its_samples(eos_at: int, sizes: list[int]) -> None:
    loop = se.make_loop(chunks=ChunkPolicy(1, 4))
    se.force_end_of_audio(loop, eos_at)
    got = se.sequence(se.request("stop early", frames=12, seed=3))
    loop.submit(got.seq)
    se.run_until_idle(loop)
    assert [c.frames for c in got.chunks] == sizes
    last = got.chunks[-1]
    assert last.is_last and last.finish_reason is FinishReason.END_OF_AUDIO
    assert got.codes.shape == (eos_at, 32) and got.pcm.shape == (eos_at * FS,)
    assert not (got.codes == 0).all(axis=1).any()
    if eos_at:
        np.testing.assert_allclose(got.pcm, se.codec().decode(torch.as_tensor(got.codes)).numpy(), atol=1e-5)
    assert loop.scheduler.free_slots == 4 and got.seq.slot in loop.runner.decoder.free_slots
    assert bool((loop.runner.positions < 0).all())


def test_silence_guard_stops_a_quiet_runaway() -> None:
    loud_enough = SilenceGuard(rms=1e3, seconds=0.4)  # every frame counts as silent: stop after 5
    got = se.run_alone(se.request("quiet", frames=20, seed=1), chunks=ChunkPolicy(1, 2), silence=loud_enough)
    assert got.chunks[-1].finish_reason is FinishReason.SILENCE and got.chunks[-1].is_last
    assert got.codes.shape[0] == 5  # chunks of 1, 2, 2 frames
    off = se.run_alone(
        se.request("quiet", frames=6, seed=1),
        chunks=ChunkPolicy(1, 2),
        silence=SilenceGuard(rms=1e3, seconds=0),
    )
    assert off.chunks[-1].finish_reason is FinishReason.LENGTH and off.codes.shape[0] == 6


def test_cancel_stops_at_the_next_frame_and_frees_slot_and_decoder_state() -> None:
    loop = se.make_loop(n_slots=2)
    keep_req = se.request("keeps going", frames=6, seed=4)
    solo = se.run_alone(keep_req, n_slots=2).codes
    gone, keep = se.sequence(se.request("client leaves", frames=20, seed=9)), se.sequence(keep_req)
    loop.submit(gone.seq)
    loop.submit(keep.seq)
    loop.run_once()
    loop.run_once()
    slot = gone.seq.slot
    assert slot is not None and slot not in loop.runner.decoder.free_slots
    loop.cancel(gone.seq)
    steps, chunks = gone.seq.steps, len(gone.chunks)
    se.run_until_idle(loop)
    assert gone.seq.steps == steps and len(gone.chunks) == chunks  # no frame computed after the cancel
    assert gone.seq.finished and gone.seq.finish_reason is FinishReason.CANCELLED
    assert slot in loop.runner.decoder.free_slots and int(loop.runner.positions[slot]) == -1
    assert loop.scheduler.free_slots == 2
    np.testing.assert_array_equal(keep.codes, solo)  # the other stream is untouched
