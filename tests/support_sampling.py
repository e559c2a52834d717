"""Sampler test helpers: the SplitMix64 reference in Python integers, its inverse (to craft seeds whose
noise hits a chosen value), a chi-square check of draws against the exact distribution, and a kernel
around the draw's bit-by-bit k-th score."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from scipy.stats import chisquare

from serve_app.model.kernels.sampling import _kth_by_bits

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB

WORST_CASE_HASH = 0xFFFFFF_0123456789
"""A hash whose top 24 bits are all ones: the largest noise a 23- or 24-bit uniform can be made of."""


def splitmix64_reference(x: int) -> int:
    z = (x + GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def _unxorshift(y: int, shift: int) -> int:
    x = y
    for _ in range(64 // shift + 1):
        x = y ^ (x >> shift)
    return x


def splitmix64_inverse(out: int) -> int:
    """The x with splitmix64_reference(x) == out (every step of the mix is a bijection)."""
    z = _unxorshift(out, 31)
    z = (z * pow(MIX2, -1, 1 << 64)) & MASK64
    z = _unxorshift(z, 27)
    z = (z * pow(MIX1, -1, 1 << 64)) & MASK64
    z = _unxorshift(z, 30)
    return (z - GOLDEN) & MASK64


def signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def seed_with_noise_at(column: int, counter: int, hashed: int = WORST_CASE_HASH) -> int:
    """A seed (int64) whose draw `counter` hashes `column` to `hashed`: the sampler's noise key is
    splitmix64(splitmix64(seed) + counter), the column's hash splitmix64(key + column * golden)."""
    key = (splitmix64_inverse(hashed) - column * GOLDEN) & MASK64
    return signed(splitmix64_inverse((splitmix64_inverse(key) - counter) & MASK64))


def top_k_distribution(logits: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """The exact distribution of a tempered top-k draw from one row of logits (float64)."""
    scores = logits.double() / temperature
    kth = torch.topk(scores, top_k).values[-1]
    return torch.softmax(scores.masked_fill(scores < kth, float("-inf")), dim=0)


def chi_square_p(draws: torch.Tensor, expected: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test of `draws` (ids) against `expected` probabilities, over
    the ids of nonzero probability; a draw of an id of probability zero gives 0."""
    counts = torch.bincount(draws.cpu(), minlength=expected.numel()).double()
    support = expected > 0
    if counts[~support].sum() > 0:
        return 0.0
    n = counts.sum()
    return float(chisquare(counts[support].numpy(), (expected[support] * n).numpy()).pvalue)


@triton.jit
def kth_by_bits_kernel(x_ptr, out_ptr, N: tl.constexpr, KEY_BITS: tl.constexpr):
    """Program i writes the (i + 1)-th largest of the N values at `x_ptr` (`_kth_by_bits` over
    their keys' top KEY_BITS bits; the values widened to fp32)."""
    x = tl.load(x_ptr + tl.arange(0, N)).to(tl.float32)
    tl.store(out_ptr + tl.program_id(0), _kth_by_bits(x, tl.program_id(0) + 1, KEY_BITS))
