"""The streaming Mimi benchmark's op count: views are not launches, everything else is."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_mimi_stream

from tests.support_mimi_stream import random_mimi, tiny_mimi_config


def test_op_counter_counts_kernels_and_not_views() -> None:
    x = torch.randn(4, 6)
    with bench_mimi_stream.OpCounter() as counter:
        y = x.view(24).unsqueeze(0).t().squeeze(1)
        z = (y + 1).mul_(2).sum()
    torch.testing.assert_close(z, ((x + 1) * 2).sum())
    assert counter.ops == {"add": 1, "mul_": 1, "sum": 1}


def test_count_ops_of_a_decode_sums_its_ops() -> None:
    with torch.inference_mode():
        row = bench_mimi_stream.count_ops(random_mimi(tiny_mimi_config()), batch=2, frames=1)
    assert row["ops"] == sum(row["by_op"].values()) > 50
    assert "embedding" in row["by_op"] or "index" in row["by_op"]  # the quantizer's lookups


def test_op_counter_sums_written_bytes_and_counts_a_reshape_that_copies() -> None:
    """Under inference mode a reshape arrives whole: a copy when the result cannot be a view."""
    x = torch.randn(2, 3, 4)
    with torch.inference_mode(), bench_mimi_stream.OpCounter() as counter:
        x.reshape(6, 4)  # a view
        x.transpose(1, 2).reshape(2, 12)  # a copy
        x + 1
    assert counter.ops == {"reshape (copy)": 1, "add": 1}
    assert counter.written == {"reshape (copy)": 24 * 4, "add": 24 * 4}
