"""Where a burst of arrivals spends its time: a per-iteration timeline of the engine loop, the
prefill's device time by batch, and a torch profile (kernels and host ops) of one burst.

    PYTHONPATH=. python3 benchmarks/profile_engine.py --out /tmp/prof [--burst 64] [--engine-args ...]
    # the closed loop of 128 clients under the profiler: is the device busy, which stream, the gaps
    PYTHONPATH=. python3 benchmarks/profile_engine.py --out /tmp/prof --churn 128 --churn-only

CSM-1B shapes with random weights on one GPU, built as in bench_engine.py. Host timestamps only
around the loop's phases (no extra synchronisation), so the timeline is what a burst really costs.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_engine import (
    CSM_1B,
    PROMPT_20_WORDS,
    engine_options,
    mimi_config,
    random_csm,
    request,
    time_stream,
    wait_idle,
    word_tokenizer,
)

from serve_app.engine.engine import Engine
from serve_app.model.fast_step import PREFILL_ATTENTIONS
from serve_app.model.loading import LoadedModel
from serve_app.model.mimi import MimiCodec


class Timeline:
    """Wraps bound methods so each call records (name, start, end, size) in host time."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float, int]] = []
        self.t0 = time.perf_counter()

    def wrap(self, owner: Any, name: str, size: Callable[..., int] | None = None) -> None:
        fn = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            n = size(args, out) if size else 0
            self.events.append((name, start - self.t0, time.perf_counter() - self.t0, n))
            return out

        setattr(owner, name, timed)

    def summary(self) -> dict[str, Any]:
        by: dict[str, list[float]] = {}
        for name, start, end, _ in self.events:
            by.setdefault(name, []).append((end - start) * 1000)
        return {
            k: {"calls": len(v), "total_ms": round(sum(v), 2), "max_ms": round(max(v), 2)}
            for k, v in by.items()
        }


def merged_ms(spans: list[tuple[float, float]]) -> float:
    """Time (ms) covered by the union of (start, end) spans in microseconds."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total / 1000


def gpu_timeline(trace: dict[str, Any], gap_us: float = 50.0) -> dict[str, Any]:
    """From a torch profiler chrome trace: how busy the GPU was, per stream and in all, over the
    window of its first to last device activity; how much two streams overlapped; and the idle gaps
    (over `gap_us`) in between. Answers whether a loop is bound by the device or leaves it idle."""
    device = [
        e for e in trace.get("traceEvents", [])
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
    ]
    if not device:
        return {"kernels": 0}
    spans = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in device]
    begin, end = min(s for s, _ in spans), max(e for _, e in spans)
    window_ms = (end - begin) / 1000
    by_stream: dict[str, list[tuple[float, float]]] = {}
    for e, span in zip(device, spans):
        by_stream.setdefault(str(e.get("args", {}).get("stream", "?")), []).append(span)
    busy = merged_ms(spans)
    gaps, reach = [], begin
    for start, stop in sorted(spans):
        if start - reach > gap_us:
            gaps.append(start - reach)
        reach = max(reach, stop)
    streams = {
        k: {"kernels": len(v), "busy_ms": round(merged_ms(v), 2), "busy_frac": round(merged_ms(v) / window_ms, 3)}
        for k, v in sorted(by_stream.items(), key=lambda kv: -len(kv[1]))
    }
    return {
        "kernels": len(device),
        "window_ms": round(window_ms, 2),
        "busy_ms": round(busy, 2),
        "busy_frac": round(busy / window_ms, 3),
        "streams_overlap_ms": round(sum(s["busy_ms"] for s in streams.values()) - busy, 2),
        "idle_gaps": {"over_us": gap_us, "count": len(gaps), "total_ms": round(sum(gaps) / 1000, 2),
                      "max_ms": round(max(gaps, default=0) / 1000, 3)},
        "streams": streams,
    }


def profile_churn(
    engine: Engine, clients: int, out: Path, frames: int = 50, seconds: float = 1.5
) -> dict[str, Any]:
    """The closed loop of `clients` (bench_engine's churn) under the profiler, device activity
    only: the GPU timeline summary, the kernels by device time, and the trace (gzip)."""
    from bench_engine import bench_churn
    from torch.profiler import ProfilerActivity, profile

    bench_churn(engine, clients, frames, 2.0, warmup_s=1.0)  # warm-up, out of phase as in the window
    activities = [ProfilerActivity.CUDA] if torch.cuda.is_available() else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        churn = bench_churn(engine, clients, frames, seconds, warmup_s=0.5)
    trace = out / f"churn{clients}-trace.json"
    prof.export_chrome_trace(str(trace))
    summary = {"churn": churn, "gpu": gpu_timeline(json.loads(trace.read_text()))}
    with trace.open("rb") as src, gzip.open(str(trace) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    trace.unlink()
    (out / f"churn{clients}-kernels.txt").write_text(
        prof.key_averages().table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=70)
        if torch.cuda.is_available() else ""
    )
    print("churn profile", json.dumps(summary["gpu"]), flush=True)
    return summary


def burst(engine: Engine, n: int, frames: int = 10) -> list[float]:
    async def all_at_once() -> list[dict[str, Any]]:
        reqs = [request(PROMPT_20_WORDS, frames, seed=9000 + i) for i in range(n)]
        return await asyncio.gather(*(time_stream(engine, r, stop_after_first=True) for r in reqs))

    ttfa = [r["arrivals"][0] * 1000 for r in asyncio.run(all_at_once())]
    wait_idle(engine)
    return ttfa


def prefill_device_ms(engine: Engine, batches: list[int], width: int) -> list[dict[str, Any]]:
    runner = engine.loop.runner
    dev = runner.device
    out = []
    for b in batches:
        tokens = torch.randint(0, 250, (b, width, 33), device=dev)  # valid text and audio ids
        mask = torch.ones_like(tokens, dtype=torch.bool)
        positions = torch.arange(width, device=dev).expand(b, width).contiguous()
        slots = torch.arange(b, device=dev)
        fn = runner.fast.prefill
        for _ in range(2):
            fn(tokens, mask, positions, slots, width)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        sync()
        t = time.perf_counter()
        for _ in range(5):
            fn(tokens, mask, positions, slots, width)
        host = (time.perf_counter() - t) * 1000 / 5
        sync()
        total = (time.perf_counter() - t) * 1000 / 5
        out.append({"batch": b, "width": width, "ms": round(total, 2), "host_launch_ms": round(host, 2)})
        print("prefill", out[-1], flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--burst", type=int, default=64)
    p.add_argument("--max-slots", type=int, default=128)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--fused-linear-max-batch", type=int, default=None)
    p.add_argument("--chunk-frames", type=int, default=None, help="frames per later audio chunk")
    p.add_argument(
        "--prefill-attention", choices=PREFILL_ATTENTIONS, default=None, help="how short prompts' prefill attends"
    )
    p.add_argument(
        "--prefill-in-step",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="joining prompts ride in the next step's backbone pass",
    )
    p.add_argument(
        "--steady", type=int, default=128, help="streams of the steady-state kernel profile (0: skip)"
    )
    p.add_argument(
        "--churn", type=int, default=0,
        help="closed-loop clients of a profiled churn window, the GPU timeline summarised (0: skip)",
    )
    p.add_argument("--churn-frames", type=int, default=50, help="frames per request of the churn profile")
    p.add_argument("--churn-only", action="store_true", help="only the churn profile (with --churn)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model: the whole script quickly")
    args = p.parse_args()
    dev = "cpu" if args.smoke else "cuda"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"command": " ".join(sys.argv)}
    tokenizer = word_tokenizer([PROMPT_20_WORDS])
    from serve_app.model.tiny import TINY_CONFIG

    model = random_csm(TINY_CONFIG if args.smoke else CSM_1B, dev)
    model = model if args.smoke else model.to(torch.bfloat16)
    codec = MimiCodec.random(mimi_config(args.smoke), seed=0).to(dev)
    loaded = LoadedModel(model, tokenizer, codec, {"model": "csm-1b shapes", "device": dev})
    t = time.perf_counter()
    engine = Engine(
        loaded,
        max_batch_size=args.max_slots,
        silence_seconds=0.0,
        **engine_options(args),
    )
    res["startup_s"] = round(time.perf_counter() - t, 1)
    print("ready", res["startup_s"], flush=True)
    try:
        if args.churn:
            res["churn_profile"] = profile_churn(engine, min(args.churn, args.max_slots), out, args.churn_frames)
            if args.churn_only:
                return
        res["prefill"] = prefill_device_ms(engine, [b for b in (1, 8, 64) if b <= args.max_slots], 32)
        burst(engine, args.burst)  # warm-up
        tl = Timeline()
        runner, sched, loop = engine.loop.runner, engine.loop.scheduler, engine.loop
        tl.wrap(sched, "admit", lambda a, o: len(o))
        tl.wrap(runner, "start", lambda a, o: len(a[0]))
        tl.wrap(runner.fast, "_prefill", lambda a, o: a[0].shape[0])
        tl.wrap(runner.decoder, "reset")
        tl.wrap(runner, "step", lambda a, o: a[0])
        tl.wrap(runner, "fetch", lambda a, o: len(a[1]))
        tl.wrap(runner, "decode_audio", lambda a, o: len(a[0]))
        tl.wrap(loop, "run_once")
        t = time.perf_counter()
        ttfa = burst(engine, args.burst)
        res["burst"] = {
            "arrivals": args.burst,
            "ttfa_ms_p50": round(statistics.median(ttfa), 1),
            "ttfa_ms_max": round(max(ttfa), 1),
            "wall_ms": round((time.perf_counter() - t) * 1000, 1),
            "calls": tl.summary(),
        }
        res["burst_timeline"] = [(n, round(a * 1000, 2), round(b * 1000, 2), k) for n, a, b, k in tl.events]
        print("burst", json.dumps(res["burst"]), flush=True)
        (out / "profile-engine.json").write_text(json.dumps(res, indent=1))
        for name, a, b, k in tl.events[:400]:
            if name != "reset":
                print(f"{name:>14} {a * 1000:9.2f} {b * 1000:9.2f} {(b - a) * 1000:8.2f} {k}")
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
        with profile(activities=activities, with_stack=True) as prof:
            burst(engine, args.burst)
        (out / "burst-cpu.txt").write_text(
            prof.key_averages(group_by_stack_n=6).table(
                sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=60
            )
        )
        (out / "burst-cuda.txt").write_text(
            prof.key_averages().table(
                sort_by="self_device_time_total" if dev == "cuda" else "cpu_time_total",
                row_limit=40,
                max_name_column_width=70,
            )
        )
        trace = out / "burst-trace.json"
        prof.export_chrome_trace(str(trace))
        with trace.open("rb") as src, gzip.open(str(trace) + ".gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        trace.unlink()
        print((out / "burst-cpu.txt").read_text()[:5000])
        print((out / "burst-cuda.txt").read_text()[:3000])
        if args.steady:
            from bench_engine import bench_throughput

            bench_throughput(engine, [min(args.steady, args.max_slots)], 8)  # warm-up
            with profile(activities=activities) as prof:
                res["steady"] = bench_throughput(engine, [min(args.steady, args.max_slots)], 40)
            (out / "steady-kernels.txt").write_text(
                prof.key_averages().table(
                    sort_by="self_device_time_total" if dev == "cuda" else "cpu_time_total",
                    row_limit=45,
                    max_name_column_width=70,
                )
            )
            print((out / "steady-kernels.txt").read_text()[:4000])
    finally:
        (out / "profile-engine.json").write_text(json.dumps(res, indent=1))
        engine.close()


if __name__ == "__main__":
    main()
