"""The engine benchmark runs end to end on the CPU (`--smoke`: the tiny model, small counts), so the
GPU run is one command that has already run here: every section writes its fields, the host probe
included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_engine_smoke_writes_every_section_and_the_host(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_engine.py", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    [path] = tmp_path.glob("*-cpu-engine-smoke.json")
    res = json.loads(path.read_text())
    assert res["host"]["cpus"] >= 1 and res["host"]["python_loop_us"] > 0
    assert res["correctness"]["bf16_vs_fp32"]["pass"] is True and res["correctness"]["fast_vs_plain"]["pass"] is True
    assert res["bs1_ms_per_frame"] > 0 and res["ttfa_ms_p50"] > 0 and res["startup_s"] >= 0
    assert [t["streams"] for t in res["throughput"]] == [1, 2, 4]
    assert all(t["audio_s_per_s"] > 0 and t["short_streams"] == 0 for t in res["throughput"])
    assert res["hf_eager_bs1_ms_per_frame"] > 0  # the transformers port, measured in the same run
    neighbour = res["neighbour"]
    assert neighbour["flooding_requests"] == 2 * neighbour["slots"]  # a stream a slot and as many queued
    assert all(neighbour[arm]["ttfa_ms"] > 0 for arm in ("own_caller", "flooding_callers_queue"))
    # measured as the engine's own process serves: what the build left frozen out of the collector,
    # and each latency section says which collections it met
    assert res["engine"]["gc_frozen_objects"] > 10_000
    assert {"collections", "full", "ms_max"} <= set(res["burst4"]["gc"])
    assert all("gc" in neighbour[arm] for arm in ("own_caller", "flooding_callers_queue"))
    assert (tmp_path / res["plot"]).stat().st_size > 0


def test_a_section_reports_the_full_collection_it_met() -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    import gc

    import bench_engine

    quiet: dict = {}
    with bench_engine.COLLECTIONS.section(quiet):
        pass
    met: dict = {}
    with bench_engine.COLLECTIONS.section(met):
        gc.collect()
    assert quiet["gc"]["full"] == 0
    assert met["gc"]["full"] >= 1 and met["gc"]["collections"] >= 1 and met["gc"]["ms_max"] >= 0
