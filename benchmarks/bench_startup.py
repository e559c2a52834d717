"""Where a replica's start goes, and what compiling its kernels ahead saves: the engine started as a
model replica starts it (`ProcessEngine`: a process of its own), each start with its own Triton cache.

    python benchmarks/bench_startup.py --out /tmp/startup [--list FILE] [--model csm-1b-random]

Starts, in order: `cold` (an empty cache, nothing compiled ahead), `warm` (the cold start's cache),
`ahead` (an empty cache, the list compiled ahead on threads: `--list`, else the shipped one),
`ahead-warm` (the ahead start's cache, whose marker skips the pool: `ahead.done_marker`),
`ahead-processes` (an empty cache, compiled ahead on processes); `ahead-early`, `ahead-processes-early`:
the same with the pool started before the engine process's imports (`compile_ahead_early`). Each records the time to a ready
engine and the engine's own account (`info()["startup"]`: imports, load, the wait for the pool,
capture; the pool's report). Writes `startup.json` under `--out`."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PHASES = ("cold", "warm", "ahead", "ahead-warm", "ahead-processes", "ahead-early", "ahead-processes-early")
POOL = {
    "cold": "0",
    "warm": "0",
    "ahead": "threads",
    "ahead-warm": "threads",
    "ahead-processes": "processes",
    "ahead-early": "threads",
    "ahead-processes-early": "processes",
}


def log_compiles(path: str) -> None:
    """In the engine's process: append each Triton compile (a disk-cache hit too) to `path` as a
    JSON line: kernel, thread, seconds, and Triton's disk-cache key in its parts (why a kernel
    compiled in one process is or is not found by another)."""
    import threading

    import triton.compiler as tc
    from triton.compiler.compiler import get_cache_invalidating_env_vars, make_backend
    from triton.runtime.driver import driver

    original = tc.compile
    lock = threading.Lock()

    def logged(src: Any, target: Any = None, options: Any = None, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = original(src, target, options, *args, **kwargs)
        row: dict[str, Any] = {"s": round(time.perf_counter() - t0, 3), "thread": threading.current_thread().name}
        try:
            backend = make_backend(target or driver.active.get_current_target())
            parsed = backend.parse_options(dict(options or {}))
            row.update(
                kernel=getattr(src.fn, "__name__", "?"),
                fn_key=src.fn.cache_key,
                src_hash=src.hash(),
                options_hash=parsed.hash(),
                env=str(sorted(get_cache_invalidating_env_vars().items())),
                attrs=str(src.attrs),
                constants=str(sorted((str(k), repr(v), type(v).__name__) for k, v in src.constants.items())),
                signature=str(src.signature),
                options={k: str(v) for k, v in sorted(parsed.__dict__.items())},
            )
        except Exception as exc:  # noqa: BLE001 - a diagnostic only
            row["error"] = repr(exc)
        with lock, open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        return out

    tc.compile = logged


def run_phase(phase: str, model: str, max_batch_size: int, compile_log: str | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    import bench_startup  # by its module name, which the engine's process can import (not __main__)

    from serve_app.engine.process import ProcessEngine

    setup = functools.partial(bench_startup.log_compiles, compile_log) if compile_log else None
    options = {"max_batch_size": max_batch_size, "compile_ahead_early": phase.endswith("-early")}
    engine = ProcessEngine(model, options, child_setup=setup)
    res: dict[str, Any] = {"phase": phase, "pool": POOL[phase], "ready_s": round(time.perf_counter() - t0, 1)}
    try:
        info = asyncio.run(engine.info())
        res.update(startup=info.get("startup"), engine_pid=info.get("engine_process", {}).get("pid"))
    finally:
        engine.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="csm-1b-random")
    ap.add_argument("--max-batch-size", type=int, default=128)
    ap.add_argument("--list", type=Path, help="lists to compile ahead (default: the shipped file)")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--phase", choices=PHASES, help="run one start in this process (internal)")
    ap.add_argument(
        "--compile-log", action="store_true", help="each start's Triton compiles as compiles-PHASE.jsonl"
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase:
        log = str(args.out / f"compiles-{args.phase}.jsonl") if args.compile_log else None
        res = run_phase(args.phase, args.model, args.max_batch_size, log)
        (args.out / f"{args.phase}.json").write_text(json.dumps(res, indent=1))
        return
    results = []
    for phase in args.phases.split(","):
        cache = args.out / ("cache-" + {"warm": "cold", "ahead-warm": "ahead"}.get(phase, phase))
        env = {**os.environ, "TRITON_CACHE_DIR": str(cache)}
        env["CSM_COMPILE_AHEAD"] = POOL[phase]
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
            *(["--compile-log"] if args.compile_log else []),
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, check=False)
        path = args.out / f"{phase}.json"
        res = json.loads(path.read_text()) if proc.returncode == 0 and path.exists() else {"phase": phase}
        res.update(process_wall_s=round(time.perf_counter() - t0, 1), returncode=proc.returncode)
        results.append(res)
        print("\n" + json.dumps(res), flush=True)  # on a line of its own, after any child output
        (args.out / "startup.json").write_text(
            json.dumps({"command": " ".join(sys.argv), "runs": results}, indent=1)
        )


if __name__ == "__main__":
    main()
