"""The start-up benchmark on the tiny model (CPU): each phase is an engine process as a model replica
starts it, with its own Triton cache and pool setting, and its result is the engine's own account."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support_subprocess import python


def test_each_phase_starts_an_engine_process_and_keeps_its_account(tmp_path: Path) -> None:
    args = ["--model", "tiny-random", "--max-batch-size", "2", "--phases", "cold,ahead-early"]
    run = python(["benchmarks/bench_startup.py", "--out", str(tmp_path), *args], timeout_s=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "startup.json").read_text())
    assert "--phases cold,ahead-early" in result["command"]
    cold, early = result["runs"]
    assert (cold["phase"], cold["pool"], early["phase"], early["pool"]) == ("cold", "0", "ahead-early", "threads")
    for phase in (cold, early):
        assert phase["returncode"] == 0
        startup = phase["startup"]
        assert 0 < startup["imports_s"] < startup["process_s"] <= phase["ready_s"] + 0.1
        assert startup["kernels_ahead"] is None  # on a CPU nothing is compiled ahead
    printed = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [p["phase"] for p in printed] == ["cold", "ahead-early"]  # each on a line of its own
