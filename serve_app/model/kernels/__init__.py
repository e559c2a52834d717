"""Triton kernels for the GPU decode step (imported only where Triton and a CUDA device exist)."""

from __future__ import annotations

import importlib.util


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None
