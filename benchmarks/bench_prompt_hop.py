"""How long a request takes from `Engine.stream` to its sequence queued in the engine, with its
prompt built on the event loop (`engine.builds_inline`) or in a worker thread (`asyncio.to_thread`),
while other streams keep the engine's loop thread and the event loop busy.

The tiny random preset on this machine's CPU: the loop thread's torch calls give up and retake the
GIL as on a GPU replica, so the thread pool's hop there and back waits for it the same way. Rounds
alternate between the two forms.

    python benchmarks/bench_prompt_hop.py    # writes $OUT (or benchmarks/results)/<date>-cpu-prompt-hop.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_engine import request
from cpu_results import nearest_rank, write_cpu_result

from serve_app.engine import engine as engine_module
from serve_app.engine.engine import Engine, lower_switch_interval

TEXT = "Hello there, a short sentence for the speech engine."
BUILDS_INLINE = engine_module.builds_inline
"""The engine's own choice (a round of the other form replaces it with `False`)."""


async def time_to_queue(engine: Engine, queued: dict[int, float], seed: int) -> float:
    """Milliseconds from the stream's start to its sequence's submit (its first chunk is awaited)."""
    req = request(TEXT, 2, seed)
    began = time.perf_counter()
    chunks = engine.stream(req)
    await chunks.__anext__()
    await chunks.aclose()  # type: ignore[attr-defined]
    return (queued[id(req)] - began) * 1000


async def round_of(
    engine: Engine, queued: dict[int, float], inline: bool, requests: int, busy: int
) -> list[float]:
    engine_module.builds_inline = BUILDS_INLINE if inline else (lambda _: False)  # type: ignore[assignment]
    stop = asyncio.Event()

    async def background(i: int) -> None:
        while not stop.is_set():
            async for _ in engine.stream(request("a background stream of words", 20, i)):
                pass

    others = asyncio.gather(*(background(i) for i in range(busy)))
    await asyncio.sleep(0.5)
    times = []
    for i in range(requests):
        times.append(await time_to_queue(engine, queued, i))
        await asyncio.sleep(0.01)
    stop.set()
    await others
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of each form, alternating")
    p.add_argument("--requests", type=int, default=40, help="timed requests per round, one at a time")
    p.add_argument("--busy", type=int, default=4, help="streams generating beside them")
    args = p.parse_args()
    lower_switch_interval()  # as in a model replica
    engine = Engine.from_preset("tiny-random", device="cpu", max_batch_size=8)
    queued: dict[int, float] = {}
    submit = engine.loop.submit

    def timed_submit(seq: Any) -> None:
        queued[id(seq.request)] = time.perf_counter()
        submit(seq)

    engine.loop.submit = timed_submit  # type: ignore[method-assign]
    rounds: dict[str, list[dict[str, float]]] = {"thread": [], "inline": []}
    try:
        for _ in range(args.rounds):
            for name in ("thread", "inline"):
                times = asyncio.run(round_of(engine, queued, name == "inline", args.requests, args.busy))
                row = {
                    "p50_ms": round(statistics.median(times), 3),
                    "p90_ms": round(nearest_rank(times, 0.9), 3),
                    "max_ms": round(max(times), 3),
                }
                rounds[name].append(row)
                print(name, row, flush=True)
    finally:
        engine_module.builds_inline = BUILDS_INLINE  # type: ignore[assignment]
        engine.close()
    write_cpu_result(
        "prompt-hop",
        {
            "what": "time from Engine.stream to the request's sequence queued, prompt built inline or in a thread",
            "requests_per_round": args.requests,
            "busy_streams": args.busy,
            "rounds": rounds,
        },
    )


if __name__ == "__main__":
    main()
