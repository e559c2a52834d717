"""The WebSocket benchmark runs end to end on the CPU (`--smoke`), so the GPU run is one command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_ws_smoke_writes_its_measurements(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_ws.py", "--smoke", "--ttfa-trials", "1", "--longform-s", "3",
         "--out", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [path] = tmp_path.glob("*-cpu-ws-smoke.json")
    res = json.loads(path.read_text())
    assert res["ttfa"]["trials"] == 1 and res["ttfa"]["first_audio_after_boundary_ms"]["p50"] > 0
    longform = res["longform"]
    assert 2.9 <= longform["audio_s"] <= 3.0 and longform["finish_reason"] == "length"
    assert longform["real_time_factor"] > 0 and longform["chunks"] >= 2
