"""Time the shared rate limiter adds to a request: its token through Ray Serve, as an ingress takes it.

A local Ray cluster with the `SharedState` deployment and a caller deployment in another process (an
ingress replica's stand-in) that takes tokens two ways in turn: one handle call per request (`per_request`,
`SharedState.acquire`) and the ingress's own path (`batched`, `HandleState.acquire`: the tokens its
requests wait for sent together, one call in flight). Loads: one request at a time, a burst of
requests at once, and requests at a steady rate. Ray's own per-call cost, so CPU only.

    python benchmarks/bench_limiter.py    # writes $OUT (or benchmarks/results)/<date>-cpu-limiter.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cpu_results import nearest_rank, write_cpu_result

RATE_LIMIT = {"rate_limit_per_minute": 10_000_000}
"""Far above the load: every token is granted, so only the path's time is measured."""


def percentiles(ms: list[float]) -> dict[str, float]:
    return {
        "p50": round(nearest_rank(ms, 0.5), 2),
        "p99": round(nearest_rank(ms, 0.99), 2),
        "max": round(max(ms), 2),
    }


def caller_deployment() -> Any:
    from ray import serve

    @serve.deployment(num_replicas=1, max_ongoing_requests=16)
    class Caller:
        def __init__(self, state: Any) -> None:
            from serve_app.deploy.handle_state import HandleState

            self.state = state
            self.batched = HandleState(state, lease_s=30, per_minute=10_000_000, burst=1_000_000)

        async def take(self, mode: str) -> None:
            if mode == "batched":
                await self.batched.acquire("bench")
            else:
                await self.state.acquire.remote("bench", 10_000_000, 1_000_000)

        async def run(self, mode: str, load: str, n: int, rate: float) -> dict[str, Any]:
            """`n` token requests: one at a time ("serial"), all at once ("burst") or `rate` a second."""
            ms: list[float] = []

            async def one() -> None:
                t = time.perf_counter()
                await self.take(mode)
                ms.append((time.perf_counter() - t) * 1000)

            began = time.perf_counter()
            if load == "serial":
                for _ in range(n):
                    await one()
            elif load == "burst":
                await asyncio.gather(*(one() for _ in range(n)))
            else:
                tasks = []
                for i in range(n):
                    await asyncio.sleep(max(0.0, began + i / rate - time.perf_counter()))
                    tasks.append(asyncio.create_task(one()))
                await asyncio.gather(*tasks)
            return {
                "mode": mode,
                "load": load,
                "requests": n,
                "rate": rate or None,
                "wall_s": round(time.perf_counter() - began, 3),
                **percentiles(ms),
            }

    return Caller


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--burst", type=int, default=64)
    p.add_argument("--rate", type=float, default=170.0, help="requests a second of the steady load")
    p.add_argument("--seconds", type=float, default=4.0, help="length of the steady load")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import ray
    from ray import serve

    from serve_app.deployments import SharedState

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local", num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=150_000_000
    )
    try:
        caller = serve.run(
            caller_deployment().bind(SharedState.bind(RATE_LIMIT)), name="limiter", route_prefix=None
        )
        loads = [
            ("serial", 100, 0.0),
            ("burst", args.burst, 0.0),
            ("rate", int(args.rate * args.seconds), args.rate),
        ]
        for load, n, rate in loads:  # warm-up: both paths, every load
            for mode in ("per_request", "batched"):
                caller.run.remote(mode, load, min(n, 50), rate).result()
        rows = []
        for _ in range(args.repeats):
            for load, n, rate in loads:
                for mode in ("per_request", "batched"):
                    rows.append(caller.run.remote(mode, load, n, rate).result())
                    print(rows[-1], flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    write_cpu_result("limiter", {"rows": rows})


if __name__ == "__main__":
    main()
