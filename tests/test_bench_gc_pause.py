"""The GC-pause benchmark on the tiny engine: a full collection walks the engine's start-up objects
until they are frozen (run in a subprocess: freezing would keep this process's objects forever)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_freezing_takes_the_engines_objects_out_of_a_full_collection(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gc_pause.py"), "--rounds", "2"],
        check=True,
        env={**os.environ, "OUT": str(tmp_path)},
        timeout=300,
    )
    (path,) = tmp_path.glob("*-cpu-gc-pause.json")
    result = json.loads(path.read_text())
    assert result["chunks_streamed"] >= 1
    assert result["tracked_objects"] > 100_000  # modules, the model and its engine
    assert result["frozen_objects"] > 0.9 * result["tracked_objects"]
    assert result["full_collection_after_freeze_ms"] < result["full_collection_ms"] / 10
