"""The CPU benchmarks' shared helpers: the quantile they report and the file they write."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import cpu_results


def test_nearest_rank_is_a_measured_value() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert cpu_results.nearest_rank(values, 0.5) == 3.0
    assert cpu_results.nearest_rank(values, 0.99) == 5.0
    assert cpu_results.nearest_rank(values, 0.0) == 1.0
    assert values == [5.0, 1.0, 3.0, 2.0, 4.0]  # the caller's list is left as it was


def test_write_cpu_result_names_the_file_and_adds_the_run_fields(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["bench_x.py", "--rounds", "2"])
    path = cpu_results.write_cpu_result("x", {"rows": [1, 2]})
    assert path.parent == tmp_path and path.name.endswith("-cpu-x.json")
    result = json.loads(path.read_text())
    assert result["benchmark"] == "x" and result["rows"] == [1, 2]
    assert result["command"] == "python benchmarks/bench_x.py --rounds 2"
    assert "cores" in result["machine"]
