"""The engine profile's GPU timeline: busy time per stream, overlap and idle gaps from a trace."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import profile_engine


def kernel(ts: float, dur: float, stream: int, cat: str = "kernel") -> dict:
    return {"ph": "X", "cat": cat, "name": "k", "ts": ts, "dur": dur, "args": {"stream": stream}}


def test_merged_ms_counts_overlapping_spans_once() -> None:
    assert profile_engine.merged_ms([(0, 100), (50, 150), (300, 400), (310, 320)]) == pytest.approx(0.25)


def test_gpu_timeline_splits_busy_overlap_and_gaps() -> None:
    trace = {
        "traceEvents": [
            kernel(0, 1000, 7),  # step stream: 0-1 ms
            kernel(1000, 1000, 7),  # 1-2 ms
            kernel(1500, 1000, 13),  # audio stream: 1.5-2.5 ms, half of it beside the step
            kernel(4000, 500, 7, cat="gpu_memcpy"),  # after a 1.5 ms idle gap
            kernel(4520, 480, 7),  # a 20 us gap: under the threshold
            {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 9000, "dur": 5000},  # host: ignored
        ]
    }
    out = profile_engine.gpu_timeline(trace, gap_us=50)
    assert out["kernels"] == 5
    assert out["window_ms"] == pytest.approx(5.0)
    assert out["busy_ms"] == pytest.approx(3.48)
    assert out["busy_frac"] == pytest.approx(0.696)
    assert out["streams"]["7"]["busy_ms"] == pytest.approx(2.98)
    assert out["streams"]["13"]["busy_ms"] == pytest.approx(1.0)
    assert out["streams_overlap_ms"] == pytest.approx(0.5)
    assert out["idle_gaps"] == {"over_us": 50, "count": 1, "total_ms": 1.5, "max_ms": 1.5}


def test_gpu_timeline_of_a_trace_without_device_activity() -> None:
    assert profile_engine.gpu_timeline({"traceEvents": []}) == {"kernels": 0}


def test_churn_profile_on_the_tiny_engine_writes_its_summary(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "profile_engine.py",
            "--out",
            str(tmp_path),
            "--smoke",
            "--max-slots",
            "4",
            "--churn",
            "4",
            "--churn-frames",
            "3",
            "--churn-only",
        ],
    )
    profile_engine.main()
    import json

    res = json.loads((tmp_path / "profile-engine.json").read_text())
    assert res["churn_profile"]["churn"]["requests"] > 0
    assert "gpu" in res["churn_profile"]
    assert (tmp_path / "churn4-trace.json.gz").stat().st_size > 0
    assert "prefill" not in res  # --churn-only
