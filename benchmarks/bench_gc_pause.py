"""How long a full garbage collection stalls a process that hosts an engine, before and after
`gc.freeze()`.

Every thread of the process waits while CPython's collector walks the objects it tracks, the
engine's loop thread included, so a collection over everything an engine built (modules, the model,
captured graphs, compiled code) is a stall in every stream. Ray Serve freezes a replica's start-up
objects after its constructor; the engine's child process (`serve_app/engine/process.py`) does the
same once its engine is ready. This builds an engine, streams one request, then times full
collections with the start-up objects tracked and frozen.

    python benchmarks/bench_gc_pause.py                                   # tiny-random on the CPU
    python benchmarks/bench_gc_pause.py --preset csm-1b-random --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from cpu_results import nearest_rank, write_cpu_result

from serve_app.engine.engine import Engine
from serve_app.engine.types import GenerationRequest


def collection_ms(rounds: int) -> float:
    """The median ms of `rounds` full collections."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - start) * 1000)
    return round(nearest_rank(times, 0.5), 3)


async def one_stream(engine: Engine) -> int:
    request = GenerationRequest(text="A few words to warm every path.", max_audio_length_ms=800)
    return len([chunk async for chunk in engine.stream(request)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny-random")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    engine = Engine.from_preset(args.preset, device=args.device)
    try:
        chunks = asyncio.run(one_stream(engine))
        tracked = len(gc.get_objects())
        tracked_ms = collection_ms(args.rounds)
        gc.freeze()
        frozen_ms = collection_ms(args.rounds)
        fields = {
            "preset": args.preset,
            "device": args.device,
            "chunks_streamed": chunks,
            "tracked_objects": tracked,
            "frozen_objects": gc.get_freeze_count(),
            "full_collection_ms": tracked_ms,
            "full_collection_after_freeze_ms": frozen_ms,
        }
    finally:
        engine.close()
    print(fields, flush=True)
    if args.device == "cpu":
        write_cpu_result("gc-pause", fields)
        return
    import torch

    tag = re.sub(r"\W+", "-", torch.cuda.get_device_name(0)).lower()
    out_dir = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dt.date.today().isoformat()}-{tag}-gc-pause.json"
    command = " ".join(["python", "benchmarks/bench_gc_pause.py", *sys.argv[1:]])
    path.write_text(json.dumps({"benchmark": "gc-pause", "command": command, **fields}, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
