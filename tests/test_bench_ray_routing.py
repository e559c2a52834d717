"""The Ray routing benchmark runs on the CPU (a Ray of its own in a subprocess): every request of
each arm starts once at the stand-in model, and the shipped arm is the model deployment's backoff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_app.deployments import MODEL_ROUTING_BACKOFF_S
from tests.support_subprocess import python


def test_bench_ray_routing_runs_both_arms_and_counts_every_request(tmp_path: Path) -> None:
    run = python(
        [
            "benchmarks/bench_ray_routing.py",
            "--requests",
            "12",
            "--slots",
            "4",
            "--chunks",
            "2",
            "--chunk-s",
            "0.05",
            "--repeats",
            "1",
            "--out",
            str(tmp_path),
            "--name",
            "routing",
        ],
        timeout_s=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "routing.json").read_text())
    assert result["floor_last_end_s"] == pytest.approx(0.3)  # 12 requests, 4 at a time, 0.1 s each
    assert [r["router"] for r in result["runs"]] == [
        "Ray's default",
        {"initial_backoff_s": MODEL_ROUTING_BACKOFF_S, "max_backoff_s": MODEL_ROUTING_BACKOFF_S},
    ]
    for run_ in result["runs"]:
        assert sum(run_["model_starts_per_s"].values()) == 12
        assert run_["last_end_s"] >= result["floor_last_end_s"]
