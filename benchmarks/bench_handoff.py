"""Host cost of handing an iteration's chunks from the engine thread to an asyncio loop.

The engine thread emits one chunk for each of a quarter of its streams every iteration, then does
the rest of its host work; asyncio tasks (the response writers) await them on another thread. Timed
per iteration on the engine thread, two ways in turn: one `call_soon_threadsafe` per chunk (one
wakeup of the loop's thread each), and `LoopMailbox` (one wakeup per burst). CPU only: this is the
Python side of the loop, the same on any machine with a GIL.

    python benchmarks/bench_handoff.py      # writes $OUT (or benchmarks/results)/<date>-cpu-handoff.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cpu_results import write_cpu_result

from serve_app.engine.mailbox import LoopMailbox


def iteration_ms(mode: str, streams: int, iterations: int, host_work_ms: float) -> float:
    """Mean ms of one engine-thread iteration: post `streams // 4` chunks, then `host_work_ms` of work."""
    loop = asyncio.new_event_loop()
    queues: list[asyncio.Queue[Any]] = []
    ready = threading.Event()

    async def writer(q: asyncio.Queue[Any]) -> None:
        while (await q.get()) is not None:
            sum(range(50))  # a response writer's little work per chunk

    async def serve() -> None:
        queues.extend(asyncio.Queue() for _ in range(streams))
        tasks = [asyncio.create_task(writer(q)) for q in queues]
        ready.set()
        await asyncio.gather(*tasks)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    ready.wait()
    box = LoopMailbox(loop)
    post: Callable[[asyncio.Queue[Any], Any], None] = (
        (lambda q, item: loop.call_soon_threadsafe(q.put_nowait, item)) if mode == "per_chunk" else box.post
    )
    times = []
    for i in range(iterations):
        t0 = time.perf_counter()
        for q in queues[i % 4 :: 4]:
            post(q, i)
        end = time.perf_counter() + host_work_ms / 1000
        while time.perf_counter() < end:  # the loop's other host work, holding the GIL
            pass
        times.append((time.perf_counter() - t0) * 1000)
    for q in queues:
        post(q, None)
    thread.join()
    loop.close()
    return statistics.mean(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="64,128,256")
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--host-work-ms", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rows = []
    for streams in (int(s) for s in args.streams.split(",")):
        row: dict[str, Any] = {"streams": streams, "chunks_per_iteration": streams // 4}
        for mode in ("per_chunk", "mailbox"):
            runs = [iteration_ms(mode, streams, args.iterations, args.host_work_ms) for _ in range(args.repeats)]
            row[f"{mode}_ms"] = round(statistics.median(runs), 3)
        row["saved_us_per_chunk"] = round((row["per_chunk_ms"] - row["mailbox_ms"]) * 1000 / row["chunks_per_iteration"], 1)
        rows.append(row)
        print(row, flush=True)
    write_cpu_result("handoff", {"host_work_ms": args.host_work_ms, "rows": rows})


if __name__ == "__main__":
    main()
