"""The engine A/B's accounting: each run's figures, and the side-by-side summary."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

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


def test_summary_lists_each_arms_values_in_run_order() -> None:
    runs = [
        {"arm": "0-old", "figures": ab_engine.figures(result(9.1, 880.0))},
        {"arm": "1-new", "figures": ab_engine.figures(result(8.3, 950.0))},
        {"arm": "0-old", "figures": ab_engine.figures(result(9.2, 870.0))},
        {"arm": "1-new", "figures": {}},  # failed
    ]
    out = ab_engine.summary(runs)
    assert out["throughput_128"] == {"0-old": [880.0, 870.0], "1-new": [950.0, None]}
    assert list(out["graph_step_ms_128"]) == ["0-old", "1-new"]


def test_flag_arms_split_their_arguments_as_a_shell_would() -> None:
    arms = ab_engine.flag_arms(["stack=--mimi-seanet stack", 'kernel=--mimi-seanet kernel --notes "a b"'])
    assert [(a.name, a.args) for a in arms] == [
        ("stack", ("--mimi-seanet", "stack")),
        ("kernel", ("--mimi-seanet", "kernel", "--notes", "a b")),
    ]
    assert all(a.tree == ab_engine.ROOT for a in arms)
    with pytest.raises(ValueError, match="NAME=ARGS"):
        ab_engine.flag_arms(["--mimi-seanet stack"])
    with pytest.raises(ValueError, match="differ"):
        ab_engine.flag_arms(["a=--x", "a=--y"])


FAKE_BENCH = """
import json, os, sys, pathlib
import site_only_package  # installed outside the tree, on the caller's PYTHONPATH
args = sys.argv[1:]
out = pathlib.Path(args[args.index("--out") + 1])
speed = 1000.0 if "--fast" in args else 900.0
calls = pathlib.Path(__file__).with_name("calls.txt")
with calls.open("a") as f:
    f.write(" ".join(args[2:]) + "\\n")
(out / "r.json").write_text(json.dumps({"throughput": [{"streams": 128, "audio_s_per_s": speed}]}))
"""


def test_run_takes_the_arms_in_turns_with_their_own_arguments(tmp_path: Path, monkeypatch) -> None:
    """A stand-in bench_engine.py records its arguments: the arms alternate, each adds its own
    arguments after the common ones, and the summary on disk holds every run as it finished."""
    tree = tmp_path / "tree"
    (tree / "benchmarks").mkdir(parents=True)
    (tree / "benchmarks" / "bench_engine.py").write_text(FAKE_BENCH)
    site = tmp_path / "site"
    site.mkdir()
    (site / "site_only_package.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(site))
    arms = [ab_engine.Arm("slow", tree), ab_engine.Arm("fast", tree, ("--fast",))]
    written: list[int] = []
    real_write = ab_engine.write_summary
    monkeypatch.setattr(
        ab_engine,
        "write_summary",
        lambda path, gpu, runs: (written.append(len(runs)), real_write(path, gpu, runs)),
    )
    path = ab_engine.run(arms, 2, ["--streams", "128"], tmp_path / "out", timeout_s=60)
    calls = (tree / "benchmarks" / "calls.txt").read_text().splitlines()
    assert calls == ["--streams 128", "--streams 128 --fast"] * 2
    assert written == [1, 2, 3, 4]
    saved = json.loads(path.read_text())
    assert saved["summary"]["throughput_128"] == {"slow": [900.0, 900.0], "fast": [1000.0, 1000.0]}
    assert [r["arm"] for r in saved["runs"]] == ["slow", "fast", "slow", "fast"]
    assert [r["exit"] for r in saved["runs"]] == [0, 0, 0, 0]


def test_a_run_imports_the_arms_tree_before_the_callers_path(tmp_path: Path) -> None:
    assert ab_engine.python_path(tmp_path, None) == str(tmp_path)
    inherited = os.pathsep.join(["/site", "", "/repo"])
    assert ab_engine.python_path(tmp_path, inherited).split(os.pathsep) == [str(tmp_path), "/site", "/repo"]
