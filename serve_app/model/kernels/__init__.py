"""Triton kernels for the GPU decode step (imported only where Triton and a CUDA device exist)."""

from __future__ import annotations

import importlib.util


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


MIN_FUSED_HEAD_DIM = 32
"""Smallest head size the fused decode attention compiles for: it multiplies each rotary half
(head_dim / 2 columns) with `tl.dot`, which needs an inner size of at least 16."""


def fused_attention_supports(*head_dims: int) -> bool:
    return all(d >= MIN_FUSED_HEAD_DIM and d % 2 == 0 for d in head_dims)
