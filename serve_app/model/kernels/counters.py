"""Zeroed int32 counters that kernels share across launches (split-K tile counts).

A kernel that counts its programs in (the split-K tiles of `fused_linear`) leaves its counters zero
when it ends, so launches that run one after another share one set per device. Two such launches
must not run at once on two streams (an engine runs its steps on one).

A set is made on first use, which must not be inside a CUDA-graph capture: the counters would then
be zeroed by that graph's first replay only, and other graphs replayed before it would read whatever
the memory held. `reserve` them before capturing."""

from __future__ import annotations

import torch

_COUNTERS: dict[tuple[str, torch.device], torch.Tensor] = {}


def _one_name(device: torch.device) -> torch.device:
    """"cuda" and "cuda:0" (when 0 is current) name one GPU, so they share one set."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def device_counters(name: str, device: torch.device, size: int) -> torch.Tensor:
    """The device's zeroed int32 counters called `name` (at least `size` of them)."""
    key = (name, _one_name(torch.device(device)))
    counters = _COUNTERS.get(key)
    if counters is None or counters.numel() < size:
        if key[1].type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"the {name} counters must be made before a CUDA-graph capture")
        counters = _COUNTERS[key] = torch.zeros(size, dtype=torch.int32, device=key[1])
    return counters
