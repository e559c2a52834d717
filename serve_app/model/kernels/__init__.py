"""Triton kernels for the GPU decode step (imported only where Triton and a CUDA device exist)."""

from __future__ import annotations

import importlib.util
import os

import torch


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_runs_on(device: torch.device) -> bool:
    """Whether Triton kernels can run for tensors on `device`: compiled on CUDA, or on CPU under
    Triton's interpreter (`TRITON_INTERPRET=1`, as the tests run them)."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return triton_available() and (device.type == "cuda" or interpreted)


MIN_FUSED_HEAD_DIM = 32
"""Smallest head size the fused decode attention compiles for: it multiplies each rotary half
(head_dim / 2 columns) with `tl.dot`, which needs an inner size of at least 16."""


def fused_attention_supports(*head_dims: int) -> bool:
    return all(d >= MIN_FUSED_HEAD_DIM and d % 2 == 0 for d in head_dims)
