"""Streaming: chunk sizes, exact audio (stream == whole decode == reference generator), the end-of-audio
frame at any point of a chunk, the silence guard, and cancellation freeing the slot mid-way."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from serve_app.engine.cuda_graphs import frame_rms
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


def _silence_stop(rms: np.ndarray, threshold: float, frames: int, reset: bool = True) -> int | None:
    """The frame at which `frames` quiet frames have been counted (a loud one resets the count)."""
    count = 0
    for i, value in enumerate(rms):
        count = count + 1 if value < threshold else (0 if reset else count)
        if count >= frames:
            return i
    return None


def test_frame_rms_is_each_frames_loudness() -> None:
    pcm = torch.randn(3, 4 * FS) * torch.tensor([0.001, 0.1, 1.0, 0.01]).repeat_interleave(FS)
    expected = np.sqrt(np.mean(np.square(pcm.numpy().reshape(3, 4, FS), dtype=np.float64), axis=-1))
    np.testing.assert_allclose(frame_rms(pcm, 4).numpy(), expected, rtol=1e-5)


def test_fetched_decodes_split_into_pcm_and_loudness_with_no_torch_call_per_chunk() -> None:
    """A decode comes back as one tensor (its copy to the host queued behind it); fetching hands each
    chunk's pcm and frame loudness over as numpy views, with no torch call of its own."""
    loop = se.make_loop(n_slots=4)
    runner = loop.runner
    runner.history.random_(0, 64)
    decoded = [runner.decode_audio([0, 1], [0, 0], 1), runner.decode_audio([2], [3], 4)]
    calls = se.torch_calls(lambda: runner.fetch(None, decoded))
    assert [c for c in calls if c != "Tensor.numpy"] == []
    _, host = runner.fetch(None, decoded)
    for (pcm, rms), streams, frames in zip(host, (2, 1), (1, 4), strict=True):
        assert pcm.shape == (streams, frames * FS) and rms.shape == (streams, frames)
        np.testing.assert_allclose(rms, frame_rms(torch.from_numpy(pcm.copy()), frames).numpy(), rtol=1e-5)
        assert np.abs(pcm).max() > 0


def test_silence_guard_counts_each_frames_loudness_and_a_loud_frame_resets_it() -> None:
    req = se.request("quiet", frames=20, seed=2)  # its loudest frames are not all at the start
    free = se.run_alone(req, chunks=ChunkPolicy(1, 1), silence=se.NO_SILENCE_GUARD)
    rms = np.sqrt(np.mean(np.square(free.pcm.reshape(-1, FS), dtype=np.float64), axis=1))
    guard_frames = 3
    cases = {}
    for threshold in np.quantile(rms, [0.3, 0.5, 0.7, 0.9]).tolist():
        stop = _silence_stop(rms, threshold, guard_frames)
        if stop is not None:
            cases[threshold] = stop
    # At least one case where a loud frame reset the count (without resets it would stop earlier).
    assert any(_silence_stop(rms, t, guard_frames, reset=False) != stop for t, stop in cases.items())
    for threshold, stop in cases.items():
        guard = SilenceGuard(rms=threshold, seconds=guard_frames * 0.08)
        got = se.run_alone(req, chunks=ChunkPolicy(1, 1), silence=guard)
        assert got.chunks[-1].finish_reason is FinishReason.SILENCE
        assert got.codes.shape[0] == stop + 1, threshold
        np.testing.assert_allclose(got.pcm, free.pcm[: (stop + 1) * FS], atol=1e-5)


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


def _staggered(chunks: ChunkPolicy) -> tuple[list[se.Collected], int]:
    """Three streams joining at different steps; their chunks and the audio decode launches."""
    loop = se.make_loop(chunks=chunks)
    launches = 0
    decode = loop.runner.decode_audio

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal launches
        launches += 1
        return decode(*args, **kwargs)

    loop.runner.decode_audio = counted  # type: ignore[method-assign]
    got = [se.sequence(se.request(f"stream {i}", frames=21, seed=20 + i)) for i in range(3)]
    for joins_after, collected in zip((0, 1, 2), got):
        for _ in range(joins_after):
            loop.run_once()
        loop.submit(collected.seq)
    se.run_until_idle(loop)
    return got, launches


def test_aligned_chunks_end_on_the_frame_clock_with_the_same_audio_in_fewer_launches() -> None:
    ramp = ChunkPolicy(first_frames=1, frames=4, ramp=True)
    aligned = ChunkPolicy(first_frames=1, frames=4, ramp=True, align=True)
    assert aligned.sizes == ramp.sizes == (1, 2, 4)
    plain, plain_launches = _staggered(ramp)
    got, launches = _staggered(aligned)
    assert len({c.seq.first_step % 4 for c in got}) == 3  # they joined out of phase
    for ours, theirs in zip(got, plain):
        np.testing.assert_array_equal(ours.codes, theirs.codes)
        np.testing.assert_allclose(ours.pcm, theirs.pcm, atol=1e-5)
        sizes = [c.frames for c in ours.chunks]
        assert sum(sizes) == 21 and sizes[0] == 1
        start = ours.seq.first_step + 1
        for before, size in itertools.pairwise(sizes[:-1]):  # every later chunk but the stream's rest
            assert start % size == 0 and size <= 2 * before, (ours.seq.first_step, sizes)
            start += size
        assert sizes.count(4) >= 3
    assert launches < plain_launches


def test_aligned_chunk_sizes_follow_the_lowest_set_bit_of_the_start() -> None:
    p = ChunkPolicy(first_frames=1, frames=8, ramp=True, align=True)
    assert p.next_size(0, 5) == 1  # the first chunk is never cut
    assert [p.next_size(3, g) for g in (8, 12, 6, 7, 16, 0)] == [8, 4, 2, 1, 8, 8]
    assert [p.next_size(1, g) for g in (8, 6, 3)] == [2, 2, 1]  # the ramp still caps it
    assert ChunkPolicy(first_frames=2, frames=6, align=True).sizes == (1, 2, 4, 6)
    assert ChunkPolicy(first_frames=2, frames=6).next_size(1, 3) == 6  # unaligned: the target
