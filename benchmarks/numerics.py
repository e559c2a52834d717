"""Comparisons the benchmarks share (kept free of the serving stack, so kernel benchmarks run on a
bare GPU image with torch and Triton only)."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
