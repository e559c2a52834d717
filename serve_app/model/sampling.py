"""Temperature + top-k sampling with per-row seeds and no host synchronisation (the PyTorch sampler;
`serve_app.model.kernels.sampling` is its Triton twin and draws the same ids).

Each row of a batch samples with its own random stream: the noise for a draw is a hash of
(row seed, draw counter, vocabulary index) — a counter-based generator (SplitMix64) in plain
int64 tensor ops. So a request's codes depend only on its seed and its logits, never on which
other requests share the batch, and the whole sampler can run inside a captured CUDA graph
(no `torch.Generator` state, no `.item()`). Sampling itself is the exponential-race form of a
categorical draw used by the original generator: argmax(p / q) with q = -log(u) ~ Exp(1).

The uniforms u are (bits + 0.5) / 2**23 for the top 23 bits of a hash, so u is exact in float32
and strictly inside (0, 1): never 0 (q would be infinite) and never 1 (q would be 0, and a masked
id's 0 / 0 would win the argmax). Only ids inside the top k can win the race.
"""

from __future__ import annotations

import torch

from serve_app.constants import NUM_CODEBOOKS


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


GOLDEN = _signed(0x9E3779B97F4A7C15)
"""SplitMix64's increment (as an int64): also the per-column offset of the noise hash."""
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)

NOISE_BITS = 23
"""Hash bits per uniform: with 23 bits, bits + 0.5 is exact in float32's 24-bit significand."""


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's `>>` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 output function of state `x + golden` (int64, wrapping arithmetic)."""
    z = x + GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def draw_counter(frame: torch.Tensor, codebook: int | torch.Tensor) -> torch.Tensor:
    """The draw counter of codebook `codebook` of frame `frame`: each gets its own draw."""
    return frame * NUM_CODEBOOKS + codebook


def noise_columns(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Per-column hash offsets of the noise (`column * golden`, wrapping int64) for the first n ids.

    A tensor rather than a constant, so the draw compiles: inductor cannot lower a 64-bit constant
    times a column index. Its length is also the number of candidate ids (the vocabulary limit)."""
    return torch.arange(n, dtype=torch.long, device=device) * GOLDEN


def noise_bits(seeds: torch.Tensor, counters: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(B, n) int64 in [0, 2**23): the top `NOISE_BITS` bits of hash(seed, counter, column)."""
    key = splitmix64(splitmix64(seeds.long()) + counters.long())
    return _shr(splitmix64(key[:, None] + columns[None, :]), 64 - NOISE_BITS)


def bits_to_uniform(bits: torch.Tensor) -> torch.Tensor:
    """float32 in [2**-24, 1 - 2**-24], exactly: (bits + 0.5) / 2**23."""
    return (bits.float() + 0.5) * (1.0 / (1 << NOISE_BITS))


def uniform_noise(seeds: torch.Tensor, counters: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(B, n) float32 uniforms strictly inside (0, 1), a pure function of (seed, counter, column)."""
    return bits_to_uniform(noise_bits(seeds, counters, columns))


def sample_top_k(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    seeds: torch.Tensor,
    counters: torch.Tensor,
    columns: torch.Tensor,
    max_top_k: int | None = None,
) -> torch.Tensor:
    """Sample one id per row of `logits` (B, V) among its first `len(columns)` ids.

    temperature (B,) float > 0, top_k (B,) long (1 = greedy), seeds/counters (B,) long: the random
    stream of a row is selected by its seed, the draw within it by its counter; `columns` is
    `noise_columns(vocab_limit)`. `max_top_k`, a static bound on `top_k` known without reading it
    back, replaces the full sort by a shorter top-k (same ids)."""
    logits = logits[:, : columns.shape[0]]
    scores = logits.float() / temperature.float().unsqueeze(1)
    v = scores.shape[1]
    k_bound = v if max_top_k is None else min(max_top_k, v)
    ranked = torch.topk(scores, k_bound, dim=-1).values
    kth = ranked.gather(1, (top_k.clamp(1, k_bound) - 1).unsqueeze(1))
    dropped = scores < kth
    scores = scores.masked_fill(dropped, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    race = -torch.log(uniform_noise(seeds, counters, columns))
    # Ids outside the top k are out of the race outright, whatever the noise.
    sampled = torch.argmax(torch.where(dropped, -1.0, probs / race), dim=-1)
    greedy = torch.argmax(scores, dim=-1)
    return torch.where(top_k == 1, greedy, sampled)
