"""Per-chunk latency of the streaming Mimi decoder.

Times `decode` for 1- and 4-frame chunks at batch 1 and 16: the tiny test config on CPU (eager), and
the full default `MimiConfig` (random weights, bf16 and fp32) on CUDA when available, both eager
(`MimiStreamDecoder`) and replayed from CUDA graphs (`GraphedMimiStreamDecoder`).
The decoder's cost per call does not depend on how far a stream is (fixed-size window cache), so
streams are timed from their start after a short warm-up.

    python benchmarks/bench_mimi_stream.py [--iters 30] [--threads 1] [--parts tiny-cpu,full-cuda]
        [--attention sdpa,kernel]  # the decoder transformer's attention, each timed in the same run
        [--seanet stack,kernel]    # the SEANet as StreamingStack runs it, or channels-last (KernelSeanet), likewise
        [--profile 128x1,128x8]    # kernel tables of eager decodes (writes <date>-cuda-mimi-profile.txt)
    python benchmarks/bench_mimi_stream.py --parts ops --batches 1 --frames 1,8   # ATen ops per decode (CPU)

Writes JSON (with the command that made it) to $OUT if set, else to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import MimiConfig, MimiModel

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support_mimi_stream import random_mimi, tiny_mimi_config

from serve_app.engine.cuda_graphs import GraphedMimiStreamDecoder
from serve_app.model import mimi_stream_seanet, mimi_stream_transformer
from serve_app.model.mimi_stream import MimiStreamDecoder

BATCHES = (1, 16)
CHUNK_FRAMES = (1, 4)
FRAME_MS = 80


MODES = {"eager": MimiStreamDecoder, "cuda-graphs": GraphedMimiStreamDecoder}


def time_case(mimi: MimiModel, mode: str, batch: int, frames: int, iters: int, warmup: int) -> dict:
    """Latency of `iters` consecutive decode calls of `frames` frames for `batch` streams."""
    device = next(mimi.parameters()).device
    started = time.perf_counter()
    decoder = MODES[mode](mimi, max_streams=batch)
    slots = torch.arange(batch)  # on the host, as an engine's scheduler holds them
    for slot in range(batch):
        decoder.reset(slot)
    shape = (batch, mimi.config.num_quantizers, frames)
    codes = torch.randint(0, mimi.config.codebook_size, shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    setup_s = 0.0
    for i in range(warmup + iters):
        sync()
        start = time.perf_counter()
        if i == warmup:  # building, capturing and the warm-up calls
            setup_s = start - started
        decoder.decode(codes, slots, check=False)
        sync()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    median = statistics.median(times)
    audio_ms = batch * frames * FRAME_MS
    return {
        "mode": mode,
        "batch": batch,
        "chunk_frames": frames,
        "iters": iters,
        "median_ms": round(median, 3),
        "p90_ms": round(times[math.ceil(0.9 * len(times)) - 1], 3),
        "mean_ms": round(statistics.fmean(times), 3),
        "audio_ms_per_call": audio_ms,
        "realtime_factor": round(audio_ms / median, 2),
        "setup_s": round(setup_s, 2),
    }


def config_summary(config: MimiConfig) -> dict:
    keys = ("hidden_size", "num_filters", "num_hidden_layers", "num_attention_heads", "sliding_window")
    return {key: getattr(config, key) for key in keys}


def run_part(
    name: str,
    mimi: MimiModel,
    modes: list[str],
    iters: int,
    warmup: int,
    batches: tuple[int, ...] = BATCHES,
    chunk_frames: tuple[int, ...] = CHUNK_FRAMES,
    attentions: tuple[str, ...] = ("default",),
    seanets: tuple[str, ...] = ("default",),
) -> list[dict]:
    dtype = str(next(mimi.parameters()).dtype).removeprefix("torch.")
    rows = []
    shipped = mimi_stream_seanet.SEANET_KERNEL
    for seanet, attention in itertools.product(seanets, attentions):
        mimi_stream_transformer.FUSED_ATTENTION = {"default": None, "sdpa": False, "kernel": True}[attention]
        mimi_stream_seanet.SEANET_KERNEL = {"default": shipped, "stack": False, "kernel": True}[seanet]
        for mode in modes:
            for batch in batches:
                for frames in chunk_frames:
                    row = {"part": name, "dtype": dtype, "config": config_summary(mimi.config)}
                    row["attention"], row["seanet"] = attention, seanet
                    row.update(time_case(mimi, mode, batch, frames, iters, warmup))
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    mimi_stream_transformer.FUSED_ATTENTION = None
    mimi_stream_seanet.SEANET_KERNEL = shipped
    return rows


def profile_case(mimi: MimiModel, batch: int, frames: int, calls: int = 5) -> str:
    """Kernel time table of `calls` eager decodes (eager: each kernel shows; a graph replays the same)."""
    from torch.profiler import ProfilerActivity, profile

    decoder = MimiStreamDecoder(mimi, batch)
    decoder.reset(*range(batch))
    slots = torch.arange(batch, device="cuda")
    codes = torch.randint(
        0, mimi.config.codebook_size, (batch, mimi.config.num_quantizers, frames), device="cuda"
    )
    for _ in range(3):
        decoder.decode(codes, slots, check=False)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            decoder.decode(codes, slots, check=False)
        torch.cuda.synchronize()
    table = prof.key_averages().table(
        sort_by="self_device_time_total", row_limit=30, max_name_column_width=90
    )
    return f"==== batch {batch} x {frames} frames, {calls} calls, eager\n{table}\n"


VIEW_OPS = frozenset(
    [
        "view",
        "_unsafe_view",
        "transpose",
        "permute",
        "t",
        "numpy_T",
        "slice",
        "select",
        "unsqueeze",
        "squeeze",
        "expand",
        "as_strided",
        "detach",
        "alias",
        "unbind",
        "split",
        "split_with_sizes",
        "narrow",
        "lift_fresh",
        "_reshape_alias",
        "reshape",
    ]
)
"""ATen ops that only make a view (no kernel); everything else dispatched counts as a launch."""


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched inside it, views left out: on a GPU each is about one kernel,
    so their number is what a graphed decode's fixed cost grows with. Also sums the bytes those ops
    write (their tensor outputs; an in-place op its whole destination), the memory traffic that
    grows with streams x frames."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.written: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        out = func(*args, **(kwargs or {}))
        if name in VIEW_OPS and not _shares_storage(out, args[0] if args else None):
            name += " (copy)"  # a reshape that could not be a view (inference mode dispatches it whole)
        if name not in VIEW_OPS:
            self.ops[name] += 1
            outs = out if isinstance(out, (tuple, list)) else [out]
            self.written[name] += sum(
                t.numel() * t.element_size() for t in outs if isinstance(t, torch.Tensor)
            )
        return out


def _shares_storage(out: object, source: object) -> bool:
    if not isinstance(out, torch.Tensor) or not isinstance(source, torch.Tensor):
        return True
    return out.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()


def count_ops(mimi: MimiModel, batch: int, frames: int) -> dict:
    """Ops one eager `decode` of `batch` streams x `frames` frames dispatches (after one warm-up
    call), on the model's device; on CPU the attention is SDPA with its mask, where CUDA runs one
    kernel."""
    decoder = MimiStreamDecoder(mimi, max_streams=batch)
    slots = torch.arange(batch)
    decoder.reset(*slots.tolist())
    codes = torch.randint(0, mimi.config.codebook_size, (batch, mimi.config.num_quantizers, frames))
    decoder.decode(codes, slots, check=False)
    with OpCounter() as counter:
        decoder.decode(codes, slots, check=False)
    return {
        "part": "ops-cpu",
        "config": config_summary(mimi.config),
        "batch": batch,
        "chunk_frames": frames,
        "ops": sum(counter.ops.values()),
        "written_mb": round(sum(counter.written.values()) / 2**20, 2),
        "by_op": dict(counter.ops.most_common()),
        "written_mb_by_op": {k: round(v / 2**20, 2) for k, v in counter.written.most_common()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument(
        "--parts",
        default="tiny-cpu,full-cuda",
        help="comma list: tiny-cpu, full-cuda, ops (ATen ops per decode of the full config on CPU)",
    )
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="streams per call (CUDA)")
    parser.add_argument("--frames", default=",".join(map(str, CHUNK_FRAMES)), help="frames per call (CUDA)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list: eager, cuda-graphs (CUDA)")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="comma list (CUDA)")
    parser.add_argument(
        "--profile",
        default="",
        help="comma list of BATCHxFRAMES (e.g. 128x1,128x8): kernel tables of eager bf16 decodes (CUDA)",
    )
    parser.add_argument(
        "--attention",
        default="default",
        help="comma list: default, sdpa, kernel (the decoder transformer's attention, CUDA)",
    )
    parser.add_argument(
        "--seanet",
        default="default",
        help="comma list: default, stack, kernel (the SEANet as StreamingStack runs it, or KernelSeanet; CUDA)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()

    results: list[dict] = []
    with torch.inference_mode():
        if "tiny-cpu" in parts:
            results += run_part(
                "tiny-cpu", random_mimi(tiny_mimi_config()), ["eager"], args.iters, args.warmup
            )
        if "ops" in parts:
            full_cpu = random_mimi(MimiConfig())
            for batch in (int(b) for b in args.batches.split(",")):
                for frames in (int(f) for f in args.frames.split(",")):
                    results.append(count_ops(full_cpu, batch, frames))
                    brief = {k: v for k, v in results[-1].items() if not k.endswith("by_op")}
                    print(json.dumps(brief), flush=True)
        if "full-cuda" in parts and cuda:
            full = MimiModel(MimiConfig()).eval()
            grid = (
                tuple(int(b) for b in args.batches.split(",")),
                tuple(int(f) for f in args.frames.split(",")),
            )
            for dtype in args.dtypes.split(","):
                mimi = full.to("cuda", getattr(torch, dtype))
                results += run_part(
                    "full-cuda",
                    mimi,
                    args.modes.split(","),
                    args.iters,
                    args.warmup,
                    *grid,
                    tuple(args.attention.split(",")),
                    tuple(args.seanet.split(",")),
                )

        if args.profile and cuda:
            mimi = MimiModel(MimiConfig()).eval().to("cuda", torch.bfloat16)
            tables = [profile_case(mimi, *map(int, case.split("x"))) for case in args.profile.split(",")]
            path = out_dir / f"{dt.date.today().isoformat()}-cuda-mimi-profile.txt"
            path.write_text(
                f"{command}\n{torch.cuda.get_device_name(0)}, torch {torch.__version__}\n\n" + "".join(tables)
            )
            print(f"wrote {path}")

    device = "cuda" if cuda and "full-cuda" in parts else "cpu"
    report = {
        "benchmark": "mimi-stream-decode-latency",
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "results": results,
    }
    path = out_dir / f"{dt.date.today().isoformat()}-{device}-mimi-stream.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
