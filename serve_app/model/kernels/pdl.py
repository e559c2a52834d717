"""Programmatic dependent launch (PDL) for the decode step's Triton kernels.

A decode frame at batch 1 is about a thousand kernels, most of a few µs, so each kernel's launch
and ramp (its programs being placed, their prologue) is a real share of the frame even inside a
CUDA graph. With PDL a kernel is launched with `launch_pdl=True` and may start while the kernel
before it is still running; it waits (`gdc_wait`) for that kernel's completion and memory before
it touches anything the previous kernel writes or reads. Modes:

- `off`: plain stream order;
- `wait`: launched as dependents, waiting at their top; the next kernel launches once every
  program of the previous one has exited (its launch overlaps the previous kernel's drain);
- `early`: as `wait`, and each kernel, once its own wait returns, lets the next one launch at
  once (`gdc_launch_dependents`), so the next kernel's programs are placed while this one runs.

Every kernel waits before any load or store, so the result is the same in every mode (bit for
bit: no kernel's arithmetic changes). Kernels of other libraries in between (cuBLAS, ATen) launch
in plain stream order; a dependent after them simply starts when they end.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from serve_app.model.kernels.keys import settle

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # a Triton without grid-dependency control
    gdc_wait = gdc_launch_dependents = None

MODES = ("off", "wait", "early")

MODE = "wait"
"""The mode kernels launch with (`MODES`). The whole graphed decode step on an H200
(`benchmarks/results/2026-12-03-1009-nvidia-h200-fused-linear-pdl.json`), ms per frame:

| batch | 1 | 16 | 64 | 128 | 256 |
|---|---|---|---|---|---|
| off | 7.38 | 7.54 | 9.72 | 10.68 | 13.90 |
| wait | 7.18 | 7.35 | 9.54 | 10.53 | 13.80 |
| early | 6.83 | 7.83 | 11.80 | 11.64 | 15.31 |

With the tiles, in-kernel split-K sums and 16 sampler warps of the defaults, wait vs early: 6.80 vs
6.80, 6.93 vs 7.21, 8.67 vs 8.42, 9.52 vs 9.69, 13.01 vs 14.34. Early placement helps the small
batch alone and costs the large ones (the waiting programs hold SM slots), so `wait`."""


@functools.cache
def device_supports(index: int) -> bool:
    """PDL needs Hopper or newer and a Triton that exposes grid-dependency control."""
    return gdc_wait is not None and torch.cuda.get_device_capability(index)[0] >= 9


def launch_options(device: torch.device) -> dict[str, bool]:
    """The kernel's constexpr flags and launch option for the current `MODE` on `device`."""
    if MODE not in MODES:
        raise ValueError(f"PDL mode {MODE!r} is not one of {MODES}")
    on = (
        MODE != "off"
        and device.type == "cuda"
        and device_supports(torch.cuda.current_device() if device.index is None else device.index)
    )
    options = {"PDL_WAIT": on, "PDL_EARLY": on and MODE == "early"}
    if on:
        options["launch_pdl"] = True
    return options


@triton.jit
def enter(PDL_WAIT: tl.constexpr, PDL_EARLY: tl.constexpr):
    """A kernel's first statement: wait for the previous kernel, then (early) release the next."""
    if PDL_WAIT:
        gdc_wait()
    if PDL_EARLY:
        gdc_launch_dependents()


settle(globals())  # every key the same in every process (see `keys`)
