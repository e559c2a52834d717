"""How fast the benchmark machine's host is, recorded beside GPU results so runs on different
machines of one GPU kind can be compared.

The serving path spends host time on every iteration (launching the step's graphs, the loop's
bookkeeping, Ray's and the ingress's Python), so two machines with the same GPU can give different
figures where the host is the bound. The probe times a fixed Python loop, a small in-place torch op
on the CPU, and (on a CUDA machine) an in-place op launched on the GPU, and records the CPU model,
its count and the load average. A few hundred milliseconds; run before the load, not during it.

    python benchmarks/host_probe.py     # prints the probe as JSON
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any


def _best_of(runs: int, calls: int, fn: Callable[[], None], between: Callable[[], None] = lambda: None) -> float:
    """Microseconds per call, the fastest of `runs` runs of `calls` calls (the least disturbed);
    `between` runs after each run, untimed."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
        between()
    return round(best * 1e6, 3)


def _python_loop() -> None:
    total = 0
    for i in range(1000):
        total += i * i


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe() -> dict[str, Any]:
    """The host's figures: `python_loop_us` (1000 iterations of a multiply-add loop),
    `torch_cpu_op_us` (an in-place add on 8 CPU elements), `cuda_launch_us` (an in-place add on 8 GPU
    elements, launched and not waited for: the host's cost of one kernel launch; CUDA only)."""
    result: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python_loop_us": _best_of(5, 200, _python_loop),
    }
    try:
        import torch
    except ImportError:  # a client machine without torch: the Python figures alone
        return result
    small = torch.zeros(8)
    result["torch_cpu_op_us"] = _best_of(5, 2000, lambda: small.add_(1))
    if torch.cuda.is_available():
        on_gpu = torch.zeros(8, device="cuda")
        on_gpu.add_(1)
        torch.cuda.synchronize()

        def launch() -> None:
            on_gpu.add_(1)

        # runs short enough that the launch queue never fills (a full queue times the GPU instead)
        result["cuda_launch_us"] = _best_of(10, 200, launch, torch.cuda.synchronize)
    return result


if __name__ == "__main__":
    print(json.dumps(probe(), indent=1))
