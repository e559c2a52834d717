"""How fast Ray Serve's routers drain a queue into a model replica that was full, with Ray's default
backoff and with the model deployment's (`deployments.MODEL_ROUTING_BACKOFF_S`).

A stand-in for the model (`max_ongoing_requests` slots, each request a stream of `--chunks` chunks
`--chunk-s` apart; no engine) sits behind two ingress replicas that call it through a handle, as
the service's ingress does. `--requests` arrive at once: the first `--slots` start, the rest wait in
the ingress replicas' routers. Records, per run, when each request started at the model (counts by
second), the longest wait in Ray's queue and when the last stream ended, beside the floor the slots
allow. Runs on a CPU; each arm starts its own local Ray.

    python benchmarks/bench_ray_routing.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import host_probe
from bench_http import per_second


def build(slots: int, chunks: int, chunk_s: float, router: dict[str, float] | None) -> Any:
    """The stand-in graph: two ingress replicas, one model replica of `slots` slots."""
    from ray import serve

    options: dict[str, Any] = {"request_router_config": router} if router else {}

    @serve.deployment(
        max_ongoing_requests=slots, max_queued_requests=-1, ray_actor_options={"num_cpus": 0}, **options
    )
    class StandInModel:
        async def stream(self, sent: float) -> Any:
            started = time.time()
            for _ in range(chunks):
                await asyncio.sleep(chunk_s)
                yield started

    @serve.deployment(num_replicas=2, max_ongoing_requests=100_000, ray_actor_options={"num_cpus": 0})
    class StandInIngress:
        def __init__(self, model: Any) -> None:
            self.model = model.options(stream=True)

        async def call(self, t0: float) -> tuple[float, float, float]:
            """(sent, started at the model, ended), seconds after `t0`."""
            sent = time.time()
            started = None
            async for value in self.model.stream.remote(sent):
                started = value if started is None else started
            assert started is not None
            return sent - t0, started - t0, time.time() - t0

    return StandInIngress.bind(StandInModel.bind())


async def flood(handle: Any, requests: int) -> list[tuple[float, float, float]]:
    await handle.call.remote(time.time())  # warm the path
    t0 = time.time()
    return list(await asyncio.gather(*(handle.call.remote(t0) for _ in range(requests))))


def run_arm(args: argparse.Namespace, router: dict[str, float] | None) -> dict[str, Any]:
    import ray
    from ray import serve

    # A Ray of its own (`local`: never one already running here), no HTTP proxy: handles only.
    ray.init(
        address="local",
        num_cpus=max(2, args.cpus),
        include_dashboard=False,
        object_store_memory=150_000_000,
        log_to_driver=False,
    )
    try:
        serve.start(proxy_location="Disabled")
        handle = serve.run(
            build(args.slots, args.chunks, args.chunk_s, router), name="routing", blocking=False
        )
        rows = asyncio.run(flood(handle, args.requests))
    finally:
        serve.shutdown()
        ray.shutdown()
    return {
        "router": router or "Ray's default",
        "model_starts_per_s": per_second([started for _, started, _ in rows]),
        "longest_wait_in_ray_s": round(max(started - sent for sent, started, _ in rows), 2),
        "last_end_s": round(max(end for *_, end in rows), 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--slots", type=int, default=160, help="the model replica's max_ongoing_requests")
    p.add_argument("--chunks", type=int, default=10)
    p.add_argument("--chunk-s", type=float, default=0.2)
    p.add_argument("--cpus", type=int, default=2, help="CPUs the local Ray offers")
    p.add_argument(
        "--repeats", type=int, default=3, help="runs of each arm, in turn (the stall comes and goes)"
    )
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default=f"{dt.date.today().isoformat()}-cpu-ray-routing")
    args = p.parse_args(argv)
    from serve_app.deployments import MODEL_ROUTING_BACKOFF_S

    shipped = {"initial_backoff_s": MODEL_ROUTING_BACKOFF_S, "max_backoff_s": MODEL_ROUTING_BACKOFF_S}
    stream_s = args.chunks * args.chunk_s
    result: dict[str, Any] = {
        "benchmark": "ray-routing",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "host": host_probe.probe(),
        "requests": args.requests,
        "slots": args.slots,
        "stream_s": stream_s,
        "floor_last_end_s": round(math.ceil(args.requests / args.slots) * stream_s, 2),
        "runs": [run_arm(args, router) for _ in range(args.repeats) for router in (None, shipped)],
    }
    for name, router in (("ray_default", None), ("shipped", shipped)):
        runs = [r for r in result["runs"] if r["router"] == (router or "Ray's default")]
        result[name] = {
            "longest_wait_in_ray_s": [r["longest_wait_in_ray_s"] for r in runs],
            "last_end_s": [r["last_end_s"] for r in runs],
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    for name in ("ray_default", "shipped"):
        print(name, json.dumps(result[name]), flush=True)
    return result


if __name__ == "__main__":
    main()
