"""The host probe recorded beside GPU results measures this machine's host and says what it is."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import host_probe


def test_the_probe_times_the_python_loop_and_a_torch_op_and_names_the_cpu() -> None:
    result = host_probe.probe()
    assert result["cpus"] and result["cpus"] >= 1
    assert result["cpu_model"]
    assert 0 < result["torch_cpu_op_us"] < result["python_loop_us"] * 100
    assert result["python_loop_us"] > 1  # 1000 iterations cannot take under a microsecond in CPython
    assert ("cuda_launch_us" in result) == torch.cuda.is_available()


def test_a_call_costs_what_the_fastest_run_took_per_call() -> None:
    calls: list[int] = []
    between: list[int] = []
    us = host_probe._best_of(3, 4, lambda: calls.append(1), lambda: between.append(1))
    assert len(calls) == 12 and len(between) == 3 and 0 < us < 1000
