"""Temperature + top-k sampling with per-row seeds and no host synchronisation.

Each row of a batch samples with its own random stream: the noise for a draw is a hash of
(row seed, draw counter, vocabulary index) — a counter-based generator (SplitMix64) in plain
int64 tensor ops. So a request's codes depend only on its seed and its logits, never on which
other requests share the batch, and the whole sampler can run inside a captured CUDA graph
(no `torch.Generator` state, no `.item()`). Sampling itself is the exponential-race form of a
categorical draw used by the original generator: argmax(p / q) with q ~ Exp(1).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from serve_app.engine.types import NUM_CODEBOOKS, SamplingParams


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's `>>` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 output function of state `x + golden` (int64, wrapping arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def uniform_noise(seeds: torch.Tensor, counters: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n) float32 uniforms in (0, 1), a pure function of (seed, counter, column)."""
    key = splitmix64(splitmix64(seeds.long()) + counters.long())
    cols = torch.arange(n, device=seeds.device, dtype=torch.long) * _GOLDEN
    bits = _shr(splitmix64(key[:, None] + cols[None, :]), 40)  # top 24 bits: exact in float32
    return (bits.float() + 0.5) * (1.0 / (1 << 24))


def sample_top_k(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    seeds: torch.Tensor,
    counters: torch.Tensor,
    vocab_limit: int | None = None,
    max_top_k: int | None = None,
) -> torch.Tensor:
    """Sample one id per row of `logits` (B, V).

    temperature (B,) float > 0, top_k (B,) long (1 = greedy), seeds/counters (B,) long: the
    random stream of a row is selected by its seed, the draw within it by its counter.
    `vocab_limit` keeps only the first ids (e.g. the codec's 2048 decodable codes);
    `max_top_k` (a static bound on `top_k`, known without reading it back) avoids a full sort."""
    if vocab_limit is not None:
        logits = logits[:, :vocab_limit]
    scores = logits.float() / temperature.float().unsqueeze(1)
    v = scores.shape[1]
    k_bound = v if max_top_k is None else min(max_top_k, v)
    ranked = torch.topk(scores, k_bound, dim=-1).values
    kth = ranked.gather(1, (top_k.clamp(1, k_bound) - 1).unsqueeze(1))
    scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    race = -torch.log(uniform_noise(seeds, counters, v))
    sampled = torch.argmax(probs / race, dim=-1)
    greedy = torch.argmax(scores, dim=-1)
    return torch.where(top_k == 1, greedy, sampled)


def fresh_seed() -> int:
    """A random 63-bit seed for requests that did not pick one."""
    return secrets.randbits(63)


@dataclass
class BatchSampler:
    """Per-row sampling state for a batch; `frame` (B,) is the frame index each row is on.

    Callable as the model's `Sampler`: `(logits, codebook) -> ids`; the draw counter is
    `frame * 32 + codebook`, so each (frame, codebook) of a request gets its own draw."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    seeds: torch.Tensor
    frame: torch.Tensor
    vocab_limit: int | None = None
    max_top_k: int | None = None

    @classmethod
    def from_params(
        cls,
        params: Sequence[SamplingParams],
        device: torch.device | str,
        vocab_limit: int | None = None,
        seeds: Sequence[int] | None = None,
    ) -> BatchSampler:
        seeds = (
            list(seeds)
            if seeds is not None
            else [p.seed if p.seed is not None else fresh_seed() for p in params]
        )
        return cls(
            temperature=torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device),
            top_k=torch.tensor([p.top_k for p in params], dtype=torch.long, device=device),
            seeds=torch.tensor(seeds, dtype=torch.long, device=device),
            frame=torch.zeros(len(params), dtype=torch.long, device=device),
            vocab_limit=vocab_limit,
            max_top_k=max(p.top_k for p in params),
        )

    def __call__(self, logits: torch.Tensor, codebook: int) -> torch.Tensor:
        counters = self.frame * NUM_CODEBOOKS + codebook
        return sample_top_k(
            logits, self.temperature, self.top_k, self.seeds, counters, self.vocab_limit, self.max_top_k
        )
