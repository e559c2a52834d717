"""Each kernel's Triton disk-cache key the same in every process, whichever kernel is compiled first.

A JIT function's key folds in the constexpr globals of the functions it calls. Triton up to 3.6 (the
GPU image's) merges a callee's globals *before* computing that callee's key, so the first caller to
reach a callee misses the callee's globals and a later one gets them: the key of a kernel depended on
which kernels had been compiled before it in the process (the sampler's `_sample_kernel`, with the
depth loop's sharing its `draw_row` and `race_noise`, had two keys). A start whose compile-ahead
computed keys in one order then missed, in Triton's disk cache, what the next start's launches looked
up in another: on an H100 the first start from a warm cache compiled the sampler's five kernels and
the depth loop again, 18.4 s of its 28 s capture, the start after it none (the compile log of
`benchmarks/bench_startup.py`,
`benchmarks/results/2026-12-07-0414-nvidia-h100-80gb-hbm3-startup-key-order.json`).
Triton fixed the order upstream (triton-lang/triton#10494: a callee's key first, then its globals).

Here every kernel module settles its own functions' keys when it is imported (`settle`, its last
line), after the modules it calls into have settled theirs: each key then holds all its callees'
globals, as Triton's fixed order computes it, in every process and whatever runs first."""

from __future__ import annotations

from typing import Any

from triton.runtime.jit import JITFunction


def settle(namespace: dict[str, Any]) -> None:
    """Compute the keys of the JIT functions defined in the module `namespace` until none changes
    (callees in the same module first need one pass more per level); a no-op under Triton's
    interpreter, whose functions have no key."""
    functions = [
        value
        for value in namespace.values()
        if isinstance(value, JITFunction) and value.__module__ == namespace["__name__"]
    ]
    keys: list[str] | None = None
    for _ in range(len(functions) + 1):
        for function in functions:
            function.hash = None  # Triton's memo of the key: computed again below
        settled = [function.cache_key for function in functions]
        if settled == keys:
            return
        keys = settled
