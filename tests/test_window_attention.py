"""The streaming Mimi decoder's window-attention Triton kernel attends exactly as SDPA over the gathered
rings under the sliding-window mask: young streams (ring not yet full), streams whose ring has wrapped,
chunks of one to sixteen tokens, grouped kv heads, rings longer than one block of keys; and the whole
streaming decode with the kernel equals the one without.

Compiled on a CUDA device (where these tests carry the `gpu` mark), else under Triton's CPU
interpreter (`TRITON_INTERPRET`, set by conftest before anything imports Triton)."""

from __future__ import annotations

import pytest
import torch

from serve_app.model.kernels.window_attention import window_attention
from serve_app.model.mimi_stream import MimiStreamDecoder
from serve_app.model.mimi_stream_transformer import ring_positions, window_attention_sdpa
from tests.support_mimi_stream import random_codes, random_mimi, tiny_mimi_config

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = [pytest.mark.usefixtures("one_thread"), *([pytest.mark.gpu] if DEVICE.type == "cuda" else [])]


@pytest.mark.parametrize(
    "heads, kv_heads, window, chunk, length, past",
    [
        (2, 2, 6, 4, 1, [0, 3, 40]),  # a fresh stream, a young one, one whose ring wrapped
        (2, 2, 6, 4, 4, [0, 2, 11]),
        (4, 2, 6, 4, 3, [1, 9, 0]),  # grouped kv heads
        (2, 1, 70, 16, 16, [0, 60, 500]),  # a ring of 85 entries: two blocks of keys
        (2, 2, 70, 16, 2, [69, 70, 71]),  # the window's edge
    ],
)
def test_kernel_attends_as_sdpa_over_the_window(
    heads: int, kv_heads: int, window: int, chunk: int, length: int, past: list[int]
) -> None:
    gen = torch.Generator().manual_seed(sum(past) + length)
    dim, slots_total, ring = 16, 5, window - 1 + chunk
    keys = torch.randn(slots_total, kv_heads, ring, dim, generator=gen).to(DEVICE)
    values = torch.randn(slots_total, kv_heads, ring, dim, generator=gen).to(DEVICE)
    # q as the transformer makes it: a (B, L, H, D) projection seen as (B, H, L, D)
    q = torch.randn(len(past), length, heads, dim, generator=gen).to(DEVICE).transpose(1, 2)
    slots = torch.tensor([4, 0, 2][: len(past)], device=DEVICE)
    past_t = torch.tensor(past, device=DEVICE)
    got = window_attention(q, keys, values, slots, past_t, window, 0.25)
    want = window_attention_sdpa(q, keys, values, slots, past_t, window, 0.25)
    assert got.shape == want.shape == (len(past), heads, length, dim)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got.transpose(1, 2).is_contiguous()  # heads merge without a copy


def test_ring_positions_follow_the_newest_token() -> None:
    past = torch.tensor([0, 7, 20])
    pos = ring_positions(past, 2, 5)  # after writing 2 tokens at past, past + 1 into rings of 5
    assert pos.tolist() == [[0, 1, -3, -2, -1], [5, 6, 7, 8, 4], [20, 21, 17, 18, 19]]


def test_streaming_decode_with_the_kernel_equals_it_without() -> None:
    mimi = random_mimi(tiny_mimi_config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2))
    mimi = mimi.to(DEVICE)
    codes = random_codes(2, 10, mimi.config, seed=3).to(DEVICE)
    slots = torch.arange(2, device=DEVICE)
    out = {}
    for fused in (False, True):
        decoder = MimiStreamDecoder(mimi, max_streams=2)
        decoder._transformer = type(decoder._transformer)(
            decoder._transformer.model, 2, DEVICE, torch.float32, fused=fused
        )
        decoder.reset(0, 1)
        out[fused] = torch.cat([decoder.decode(codes[:, :, i : i + 2], slots) for i in range(0, 10, 2)], -1)
    assert decoder._transformer.fused
    torch.testing.assert_close(out[True], out[False], atol=1e-4, rtol=1e-5)
