"""Per-request sampling state for a batch, over the model's counter-based sampler
(`serve_app.model.sampling`): each row draws from its own seeded stream, so a request's codes do not
depend on what else is batched with it."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from serve_app.engine.types import SamplingParams
from serve_app.model.sampling import draw_counter, noise_columns, sample_top_k

__all__ = ["BatchSampler", "SamplingParams", "fresh_seed"]


def fresh_seed() -> int:
    """A random 63-bit seed for requests that did not pick one."""
    return secrets.randbits(63)


@dataclass
class BatchSampler:
    """Per-row sampling state for a batch; `frame` (B,) is the frame index each row is on.

    Callable as the model's `Sampler`: `(logits, codebook) -> ids`, drawing among the first
    `len(columns)` ids (`noise_columns(vocab_limit)`)."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    seeds: torch.Tensor
    frame: torch.Tensor
    columns: torch.Tensor
    max_top_k: int | None = None

    @classmethod
    def from_params(
        cls,
        params: Sequence[SamplingParams],
        device: torch.device | str,
        vocab_size: int,
        vocab_limit: int | None = None,
        seeds: Sequence[int] | None = None,
    ) -> BatchSampler:
        """`vocab_limit` keeps only the first ids of the model's `vocab_size` (e.g. the codec's
        2048 decodable codes)."""
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
            columns=noise_columns(min(vocab_limit or vocab_size, vocab_size), device),
            max_top_k=max(p.top_k for p in params),
        )

    def __call__(self, logits: torch.Tensor, codebook: int) -> torch.Tensor:
        counters = draw_counter(self.frame, codebook)
        return sample_top_k(
            logits, self.temperature, self.top_k, self.seeds, counters, self.columns, self.max_top_k
        )
