"""Where a replica's start goes, and what compiling its kernels ahead saves: the engine built as a
model replica builds it (`Engine(load_model(...))`), each start in a fresh process with its own
Triton cache, every Triton compile timed.

    python benchmarks/bench_startup.py --out /tmp/startup [--list FILE] [--model csm-1b-random]

Starts, in order: `cold` (an empty cache, nothing compiled ahead), `warm` (the cold start's cache),
`ahead` (an empty cache, the list compiled ahead: `--list`, else the shipped one), `ahead-warm` (the
ahead start's cache, whose marker skips the pool: `ahead.done_marker`), `ahead-processes` (an empty cache, compiled ahead
on processes instead of threads: `ahead.PROCESSES` on). Writes `startup.json` under `--out`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

PHASES = ("cold", "warm", "ahead", "ahead-warm", "ahead-processes")


def _time_compiles() -> list[dict[str, Any]]:
    """Every Triton compile from here on: its kernel and seconds (on whichever thread)."""
    from triton import compiler

    timings: list[dict[str, Any]] = []
    lock = threading.Lock()
    original = compiler.compile

    def timed(src: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = original(src, *args, **kwargs)
        name = getattr(getattr(src, "fn", None), "__name__", type(src).__name__)
        with lock:
            timings.append({"kernel": name, "s": time.perf_counter() - t0})
        return out

    compiler.compile = timed  # type: ignore[assignment]
    return timings


def run_phase(phase: str, model: str, max_batch_size: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    import torch

    from serve_app.engine.engine import Engine, lower_switch_interval
    from serve_app.model.kernels import ahead
    from serve_app.model.loading import load_model

    ahead.PROCESSES = phase == "ahead-processes"
    res: dict[str, Any] = {"phase": phase, "imports_s": round(time.perf_counter() - t0, 1)}
    timings = _time_compiles()
    torch.cuda.init()
    lower_switch_interval()
    t1 = time.perf_counter()
    loaded = load_model(model, device="cuda")
    res["load_s"] = round(time.perf_counter() - t1, 1)
    t1 = time.perf_counter()
    engine = Engine(loaded, max_batch_size=max_batch_size)
    res["engine_s"] = round(time.perf_counter() - t1, 1)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    if engine.kernels_ahead is not None:
        res["ahead"] = asdict(engine.kernels_ahead)
    engine.close()
    res["compiles"] = len(timings)
    res["compile_sum_s"] = round(sum(t["s"] for t in timings), 1)
    by_kernel: dict[str, list[float]] = {}
    for t in timings:
        by_kernel.setdefault(t["kernel"], []).append(t["s"])
    res["compile_by_kernel"] = {
        k: {"n": len(v), "sum_s": round(sum(v), 1), "max_s": round(max(v), 1)}
        for k, v in sorted(by_kernel.items(), key=lambda kv: -sum(kv[1]))
    }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="csm-1b-random")
    ap.add_argument("--max-batch-size", type=int, default=128)
    ap.add_argument("--list", type=Path, help="lists to compile ahead (default: the shipped file)")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--phase", choices=PHASES, help="run one start in this process (internal)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase:
        res = run_phase(args.phase, args.model, args.max_batch_size)
        (args.out / f"{args.phase}.json").write_text(json.dumps(res, indent=1))
        return
    results = []
    for phase in args.phases.split(","):
        cache = args.out / ("cache-" + {"warm": "cold", "ahead-warm": "ahead"}.get(phase, phase))
        env = {**os.environ, "TRITON_CACHE_DIR": str(cache)}
        env["CSM_COMPILE_AHEAD"] = "1" if phase.startswith("ahead") else "0"
        if args.list:
            env["CSM_KERNEL_LIST"] = str(args.list)
        cmd = [
            sys.executable,
            __file__,
            "--out",
            str(args.out),
            "--model",
            args.model,
            "--max-batch-size",
            str(args.max_batch_size),
            "--phase",
            phase,
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, check=False)
        path = args.out / f"{phase}.json"
        res = json.loads(path.read_text()) if proc.returncode == 0 and path.exists() else {"phase": phase}
        res.update(process_wall_s=round(time.perf_counter() - t0, 1), returncode=proc.returncode)
        results.append(res)
        print(json.dumps({k: v for k, v in res.items() if k != "compile_by_kernel"}), flush=True)
        (args.out / "startup.json").write_text(
            json.dumps({"command": " ".join(sys.argv), "runs": results}, indent=1)
        )


if __name__ == "__main__":
    main()
