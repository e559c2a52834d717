"""Warming the next projection's weight in L2 while the small kernels before it run.

At a small decode batch each projection streams its weight from HBM once per step, and most of a
layer's bytes are the MLP's (the depth decoder's gate/up weight is 33.6 MB of a 56 MB layer). The
kernels before it (the QKV projection, attention, the attention output) are latency-bound: they
leave HBM nearly idle for ~14 µs a layer. A launch can ask the copy engine to bring a later
weight into L2 in that time (`cp.async.bulk.prefetch.L2`, Hopper and newer): the request is
fire-and-forget, so the launch's own work does not wait for it, and the later matmul then reads
what arrived from L2 instead of HBM. It is a hint only: no value changes, whatever arrives.

`PLAN` says which launches warm which weight (`PLANS`); `MAX_BYTES` caps one warm-up, since L2
(50 MB on an H100/H200) holds only part of the backbone's 67 MB gate/up weight. Both come from the
environment (`CSM_L2_PREFETCH`, `CSM_L2_PREFETCH_MAX_MB`) so a whole service can be A/B'd.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

PLANS: dict[str, frozenset[str]] = {
    "off": frozenset(),
    "gate_up": frozenset({"qkv"}),
    "gate_up_down": frozenset({"qkv", "attention_output"}),
    "gate_up_then_down": frozenset({"qkv", "gate_up"}),
}
"""Which launches of a block warm the weight the block names for them: the QKV projection warms
the gate/up weight; the attention output or the gate/up projection warms the down weight."""

PLAN_ENV, MAX_MB_ENV = "CSM_L2_PREFETCH", "CSM_L2_PREFETCH_MAX_MB"

PLAN = os.environ.get(PLAN_ENV, "off")
"""The plan kernels launch with (a key of `PLANS`)."""

MAX_BYTES = int(float(os.environ.get(MAX_MB_ENV, "32")) * (1 << 20))
"""Most bytes one launch warms (the start of the weight)."""


def launches() -> frozenset[str]:
    """The launches that warm a weight under `PLAN`; a bad plan fails with the variable's name."""
    if PLAN not in PLANS:
        raise ValueError(f"{PLAN_ENV}={PLAN!r} is not one of {sorted(PLANS)}")
    if MAX_BYTES < 0:
        raise ValueError(f"{MAX_MB_ENV} must be >= 0, got {MAX_BYTES / (1 << 20)}")
    return PLANS[PLAN]


@functools.cache
def device_supports(index: int) -> bool:
    """The bulk L2 prefetch needs compute capability 9.0 or newer."""
    return torch.cuda.get_device_capability(index)[0] >= 9


def warm_bytes(launch: str, weight: torch.Tensor | None, device: torch.device) -> int:
    """Bytes of `weight` that `launch` should warm under `PLAN` on `device` (0: none)."""
    if weight is None or launch not in launches() or device.type != "cuda":
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1" or not weight.is_contiguous():
        return 0
    if not device_supports(torch.cuda.current_device() if device.index is None else device.index):
        return 0
    nbytes = min(weight.numel() * weight.element_size(), MAX_BYTES)
    return nbytes - nbytes % 16  # the bulk prefetch moves whole 16-byte units


@triton.jit
def prefetch_span(base_ptr, nbytes, program, programs, LANES: tl.constexpr):
    """Ask the copy engine to bring bytes [0, nbytes) of `base_ptr` into L2: the span is cut in
    `programs * LANES` chunks (16-byte multiples), one per thread of each program. Returns at
    once; nothing waits for the data."""
    lanes = tl.arange(0, LANES)
    chunk = tl.cdiv(tl.cdiv(nbytes, programs * LANES), 16) * 16
    start = (program * LANES + lanes).to(tl.int64) * chunk
    size = tl.minimum(chunk, nbytes - start)
    address = base_ptr.to(tl.int64) + start
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.gt.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.b32 $0, 0; }",
        "=r,l,r",
        [address, size.to(tl.int32)],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )
