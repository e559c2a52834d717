"""The engine A/B's accounting: each run's figures, and the side-by-side summary."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ab_engine


def result(step_ms: float, audio_s: float) -> dict:
    return {
        "graph_step": [{"batch": 128, "ms_per_step": step_ms}],
        "throughput": [{"streams": 128, "audio_s_per_s": audio_s, "loop_ms_per_iteration": {"host": 0.5}}],
        "churn": [{"clients": 256, "audio_s_per_s": audio_s / 2}],
        "burst64": {"ttfa_ms_p50": 50.0, "ttfa_ms_p99": 70.0},
        "startup_s": 30.0,
    }


def test_figures_pick_the_comparable_measures_of_a_run() -> None:
    assert ab_engine.figures(result(8.3, 950.0)) == {
        "graph_step_ms_128": 8.3,
        "throughput_128": 950.0,
        "host_ms_128": 0.5,
        "churn_256": 475.0,
        "startup_s": 30.0,
        "burst64_p50": 50.0,
        "burst64_p99": 70.0,
    }
    assert ab_engine.figures({}) == {}  # a run that wrote nothing (it failed) has no figures


def test_summary_lists_each_trees_values_in_run_order() -> None:
    runs = [
        {"tree": "0-old", "figures": ab_engine.figures(result(9.1, 880.0))},
        {"tree": "1-new", "figures": ab_engine.figures(result(8.3, 950.0))},
        {"tree": "0-old", "figures": ab_engine.figures(result(9.2, 870.0))},
        {"tree": "1-new", "figures": {}},  # failed
    ]
    out = ab_engine.summary(runs)
    assert out["throughput_128"] == {"0-old": [880.0, 870.0], "1-new": [950.0, None]}
    assert list(out["graph_step_ms_128"]) == ["0-old", "1-new"]
