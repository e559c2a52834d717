"""Bucketed (and, on CUDA, graph-replayed) streaming decode gives the eager decoder's output."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from serve_app.engine.cuda_graphs import (
    GraphedMimiStreamDecoder,
    HostStaging,
    buckets_up_to,
    frame_rms,
    smallest_bucket,
    split_ring_decode,
)
from serve_app.model import mimi_stream_seanet
from serve_app.model.mimi_stream import MimiStreamDecoder
from tests.support_engine import torch_calls
from tests.support_mimi_stream import random_codes, random_mimi, tiny_mimi_config


def test_buckets_are_powers_of_two_then_the_limit():
    assert buckets_up_to(1) == (1,)
    assert buckets_up_to(6) == (1, 2, 4, 6)
    assert buckets_up_to(16) == (1, 2, 4, 8, 16)
    assert [smallest_bucket((1, 2, 4, 6), n) for n in (1, 2, 3, 5, 6)] == [1, 2, 4, 6, 6]
    with pytest.raises(ValueError, match="beyond the largest bucket"):
        smallest_bucket((1, 2, 4, 6), 7)


def run_schedule(decoder, codes: dict[int, torch.Tensor], seed: int) -> dict[int, torch.Tensor]:
    """Decode every stream to its end in random groups of random chunk lengths."""
    rng = random.Random(seed)
    done = {slot: 0 for slot in codes}
    pieces: dict[int, list[torch.Tensor]] = {slot: [] for slot in codes}
    for slot in codes:
        decoder.reset(slot)
    while active := [s for s in codes if done[s] < codes[s].shape[-1]]:
        group = sorted(rng.sample(active, rng.randint(1, len(active))))
        n = min(rng.choice([1, 2, 4]), *(codes[s].shape[-1] - done[s] for s in group))
        batch = torch.cat([codes[s][:, :, done[s] : done[s] + n] for s in group])
        out = decoder.decode(batch.to(decoder.device), torch.tensor(group))
        for row, slot in enumerate(group):
            pieces[slot].append(out[row].cpu())
            done[slot] += n
    return {slot: torch.cat(parts) for slot, parts in pieces.items()}


def stream_codes(config, lengths: dict[int, int]) -> dict[int, torch.Tensor]:
    return {slot: random_codes(1, n, config, seed=30 + slot) for slot, n in lengths.items()}


def test_padded_buckets_match_plain_decoder():
    """Batches of 3 and 5 run as buckets 4 and 6 whose padding rows must not disturb real slots."""
    model = random_mimi(tiny_mimi_config(), seed=1)
    codes = stream_codes(model.config, {0: 6, 1: 4, 3: 7, 4: 3, 5: 5})
    bucketed = GraphedMimiStreamDecoder(model, max_streams=6, use_graphs=False)
    assert bucketed.buckets == [1, 2, 4, 6]
    got = run_schedule(bucketed, codes, seed=3)
    want = run_schedule(MimiStreamDecoder(model, max_streams=6), codes, seed=3)
    for slot in codes:
        torch.testing.assert_close(got[slot], want[slot], atol=1e-5, rtol=1e-5)


def test_scratch_slot_is_not_handed_out():
    decoder = GraphedMimiStreamDecoder(random_mimi(tiny_mimi_config()), max_streams=2, use_graphs=False)
    assert sorted([decoder.acquire(), decoder.acquire()]) == [0, 1]
    with pytest.raises(RuntimeError):
        decoder.acquire()
    with pytest.raises(ValueError, match="out of range"):
        decoder.reset(2)
    codes = torch.zeros(1, 32, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="slots"):
        decoder.decode(codes, torch.tensor([2]))
    with pytest.raises(ValueError, match="CUDA"):
        GraphedMimiStreamDecoder(random_mimi(tiny_mimi_config()), max_streams=1, use_graphs=True)


@pytest.mark.gpu
@pytest.mark.parametrize("seanet_kernel", [False, True], ids=["stack", "kernel-seanet"])
def test_cuda_graph_replay_matches_eager_decoder(seanet_kernel, monkeypatch):
    """Replayed graphs decode as the eager decoder does, with the SEANet as `StreamingStack` runs it
    or channels-last through the `stream_conv` kernel (against the eager stack, without TF32)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = random_mimi(tiny_mimi_config(), seed=2).cuda()
    codes = stream_codes(model.config, {0: 12, 2: 9, 5: 11, 6: 6, 7: 10})
    monkeypatch.setattr(mimi_stream_seanet, "SEANET_KERNEL", False)
    want = run_schedule(MimiStreamDecoder(model, max_streams=8), codes, seed=4)
    monkeypatch.setattr(mimi_stream_seanet, "SEANET_KERNEL", seanet_kernel)
    graphed = GraphedMimiStreamDecoder(model, max_streams=8)
    graphed.warmup([1])
    got = run_schedule(graphed, codes, seed=4)
    assert graphed.use_graphs and {n for _, n in graphed.captured} <= {1, 2, 4}
    for slot in codes:
        torch.testing.assert_close(got[slot], want[slot], atol=1e-4, rtol=1e-4)


def ring_schedule(decoder, plain, ring: torch.Tensor, lengths: dict[int, int], seed: int) -> None:
    """Decode each stream's frames from the ring (in random groups, chunk lengths and ring offsets
    that wrap) with `decoder.decode_ring`, and the same frames gathered by hand with `plain.decode`:
    the same audio, and each frame's loudness."""
    rng = random.Random(seed)
    done = dict.fromkeys(lengths, 0)
    for slot in lengths:
        decoder.reset(slot)
        plain.reset(slot)
    r = ring.shape[1]
    while active := [s for s in lengths if done[s] < lengths[s]]:
        group = sorted(rng.sample(active, rng.randint(1, len(active))))
        n = min(rng.choice([1, 2, 4]), *(lengths[s] - done[s] for s in group))
        first = [done[s] + 5 * r for s in group]  # a global frame number: the ring index wraps
        samples = decoder.decode_ring(group, first, n)
        if ring.is_cuda:
            torch.cuda.current_stream().synchronize()  # the copy to the host is queued, not done
        assert samples.device.type == "cpu"
        pcm, rms = (x.to(ring.device) for x in split_ring_decode(samples, n))
        at = (torch.tensor(first)[:, None] + torch.arange(n)) % r
        codes = ring[torch.tensor(group, device=ring.device)[:, None], at.to(ring.device)].transpose(1, 2)
        want = plain.decode(codes.contiguous(), torch.tensor(group))
        torch.testing.assert_close(pcm, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(rms, frame_rms(want, n), atol=1e-5, rtol=1e-4)
        for s in group:
            done[s] += n


def random_ring(config, slots: int, frames: int, device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(11)
    return torch.randint(0, config.codebook_size, (slots, frames, config.num_quantizers), generator=gen).to(
        device
    )


def test_ring_decode_equals_decoding_the_frames_gathered_from_the_ring():
    """Batches of 3 and 5 run as buckets 4 and 6; their padding reads ring row 0 into the scratch slot."""
    model = random_mimi(tiny_mimi_config(), seed=1)
    ring = random_ring(model.config, 6, 8)
    decoder = GraphedMimiStreamDecoder(model, max_streams=6, use_graphs=False, ring=ring)
    plain = GraphedMimiStreamDecoder(model, max_streams=6, use_graphs=False)
    ring_schedule(decoder, plain, ring, {0: 6, 1: 4, 3: 7, 4: 3, 5: 5}, seed=3)


def test_host_staging_hands_a_buffer_out_again_only_after_its_copies_are_done():
    staging = HostStaging(entries=2, size=12, pinned=False)
    first, first_tensor = staging.take(3, 4)
    second, _ = staging.take(3, 2)
    assert first_tensor.shape == (3, 4) and np.shares_memory(first, first_tensor.numpy())
    assert not np.shares_memory(first, second)
    third, _ = staging.take(3, 4)  # both are in flight: a buffer of its own
    assert not np.shares_memory(third, first) and not np.shares_memory(third, second)
    big, _ = staging.take(3, 5)  # larger than an entry
    assert big.shape == (3, 5)
    staging.done()
    again, again_tensor = staging.take(3, 4)
    assert np.shares_memory(again, first) and again_tensor.data_ptr() == first_tensor.data_ptr()


def test_ring_decodes_reuse_the_index_buffers_only_once_they_are_done():
    """A reused index buffer holds the last decode's values: each decode writes all of it, padding
    included (a larger group, then a smaller one in the same bucket)."""
    model = random_mimi(tiny_mimi_config(), seed=1)
    ring = random_ring(model.config, 6, 8)
    decoder = GraphedMimiStreamDecoder(model, max_streams=6, use_graphs=False, ring=ring)
    plain = GraphedMimiStreamDecoder(model, max_streams=6, use_graphs=False)
    for group in ([0, 1, 3, 4, 5], [1, 2, 3]):  # buckets 6 and 4, each with padding
        ring_schedule(decoder, plain, ring, dict.fromkeys(group, 3), seed=len(group))
        decoder.decodes_done()


def test_ring_decode_checks_its_slots_frames_and_ring():
    model = random_mimi(tiny_mimi_config())
    ring = random_ring(model.config, 2, 4)
    decoder = GraphedMimiStreamDecoder(model, max_streams=2, use_graphs=False, ring=ring)
    with pytest.raises(ValueError, match="slots"):
        decoder.decode_ring([2], [0], 1)  # the scratch slot
    with pytest.raises(ValueError, match="ring holds 4"):
        decoder.decode_ring([0], [0], 5)
    with pytest.raises(RuntimeError, match="no ring"):
        GraphedMimiStreamDecoder(model, max_streams=2, use_graphs=False).decode_ring([0], [0], 1)


@pytest.mark.gpu
def test_cuda_graph_ring_decode_matches_the_eager_decoder():
    model = random_mimi(tiny_mimi_config(), seed=2).cuda()
    ring = random_ring(model.config, 8, 16, "cuda")
    graphed = GraphedMimiStreamDecoder(model, max_streams=8, ring=ring)
    graphed.warmup([1, 4])
    assert graphed.use_graphs and {n for _, n in graphed.captured} == {1, 4}
    with pytest.raises(RuntimeError, match="decode_ring"):
        graphed.decode(torch.zeros(1, 32, 1, dtype=torch.long, device="cuda"), torch.tensor([0]))
    ring_schedule(
        graphed, MimiStreamDecoder(model, max_streams=8), ring, {0: 12, 2: 9, 5: 11, 6: 6, 7: 10}, seed=4
    )
    for _ in range(2):  # the second time, the pinned index buffer's views exist
        torch.cuda.synchronize()
        graphed.decodes_done()
        calls = torch_calls(lambda: graphed.decode_ring([0, 2, 5], [3, 4, 5], 4))
    assert len(calls) <= 4, calls  # an engine loop thread calls this for every chunk
