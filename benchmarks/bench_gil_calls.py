"""What one small torch call costs a thread while another thread of its process runs Python.

A torch op called from Python gives up the GIL for its C++ work and must take it back; if another
thread was waiting for the GIL meanwhile, it takes it, and the caller waits until that thread
reaches its switch interval. The engine's loop thread in a model replica makes dozens of small torch
calls an iteration while the replica's event-loop thread serialises chunks for Ray. Here a "loop"
thread times runs of calls alone, and beside a thread that runs Python in bursts for a given share
of the time, at the engine's switch interval (0.5 ms, `engine.lower_switch_interval`) and at
Python's default (5 ms): in-place torch ops on 8 and 256k elements, a small numpy op, and hashing
64 KiB (C work that gives up the GIL, as a device sync, a pinned copy or a graph launch does). CPU
only: this is the interpreter's behaviour, the same on a GPU machine.

    python benchmarks/bench_gil_calls.py      # writes $OUT (or benchmarks/results)/<date>-cpu-gil-calls.json
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cpu_results import nearest_rank, write_cpu_result


def torch_add(elements: int) -> Callable[[], Callable[[], None]]:
    """An in-place add on a CPU tensor of `elements` int64: tiny, or long enough to matter."""

    def make() -> Callable[[], None]:
        x = torch.zeros(elements, dtype=torch.long)

        def call() -> None:
            x.add_(1)

        return call

    return make


def numpy_add() -> Callable[[], None]:
    x = np.zeros(8, dtype=np.int64)

    def call() -> None:
        np.add(x, 1, out=x)

    return call


def sha256(size: int) -> Callable[[], Callable[[], None]]:
    """Hashing `size` bytes: C work that gives up the GIL (as a device sync or a pinned copy does)."""

    def make() -> Callable[[], None]:
        data = bytes(size)

        def call() -> None:
            hashlib.sha256(data).digest()

        return call

    return make


KINDS: dict[str, Callable[[], Callable[[], None]]] = {
    "torch_add_8": torch_add(8),
    "torch_add_256k": torch_add(1 << 18),
    "numpy_add_8": numpy_add,
    "sha256_64k": sha256(1 << 16),
}
"""Calls timed: small and large in-place torch ops, a small numpy op, and C work that releases the GIL."""


def busy_python(stop: threading.Event, duty: float, period_s: float) -> None:
    """Run pure Python for `duty` of every `period_s`, sleep the rest (an event loop's bursts)."""
    while not stop.is_set():
        end = time.perf_counter() + duty * period_s
        while time.perf_counter() < end:
            sum(range(100))
        time.sleep((1 - duty) * period_s)


def time_calls(make: Callable[[], Callable[[], None]], calls: int, rounds: int) -> list[float]:
    """µs per call of `rounds` runs of `calls` calls each, on the calling thread."""
    call = make()
    per_call = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        per_call.append((time.perf_counter() - start) / calls * 1e6)
        time.sleep(0.002)  # rounds start at different points of the other thread's bursts
    return per_call


def measure(kind: str, duty: float, switch_s: float, calls: int, rounds: int) -> dict[str, Any]:
    make = KINDS[kind]
    before = sys.getswitchinterval()
    sys.setswitchinterval(switch_s)
    stop = threading.Event()
    other = threading.Thread(target=busy_python, args=(stop, duty, 0.004), daemon=True) if duty else None
    try:
        if other:
            other.start()
            time.sleep(0.05)
        us = time_calls(make, calls, rounds)
    finally:
        stop.set()
        if other:
            other.join()
        sys.setswitchinterval(before)
    row = {
        "call": kind,
        "other_thread_python_share": duty,
        "switch_interval_ms": switch_s * 1000,
        "us_per_call_p50": round(nearest_rank(us, 0.5), 2),
        "us_per_call_p90": round(nearest_rank(us, 0.9), 2),
    }
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20, help="calls a round")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--duties", default="0,0.25,0.5", help="the other thread's share of time in Python")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = [
        measure(kind, float(duty), switch_s, args.calls, args.rounds)
        for switch_s in (0.0005, 0.005)
        for duty in args.duties.split(",")
        for kind in KINDS
    ]
    result = {"calls_per_round": args.calls, "rounds": args.rounds, "rows": rows}
    write_cpu_result("gil-calls", result)
    return result


if __name__ == "__main__":
    main()
