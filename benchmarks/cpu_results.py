"""Where a CPU benchmark writes its results, and the fields every such file carries."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def nearest_rank(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values` by nearest rank: a value that was measured."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write_cpu_result(name: str, fields: dict[str, Any]) -> Path:
    """`fields` with the benchmark's name, the time, the command and the machine, as
    `<date>-cpu-<name>.json` in $OUT (or benchmarks/results); returns the path."""
    out_dir = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dt.date.today().isoformat()}-cpu-{name}.json"
    script = Path(sys.argv[0]).name
    result = {
        "benchmark": name,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        **fields,
    }
    path.write_text(json.dumps(result, indent=1))
    print("wrote", path)
    return path
