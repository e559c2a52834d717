"""The fused decode projections against the cuBLAS path they replace, on the GPU, in one call.

Sections (written to the JSON as each finishes):
  tiles       per CSM-1B projection and batch: the fused kernel with `tile_config`'s tiles and with
              each tile of a small sweep, against the PyTorch ops it replaces (norm / SwiGLU /
              residual + cuBLAS matmul), all timed as CUDA-graph replays
  step        one decode step (backbone step + 31-codebook depth frame) per batch bucket, CUDA
              graphs over eager kernels, with the fused projections off and on
  agreement   bf16 hidden state and greedy codes of the fused step vs the cuBLAS step
  reduce      the fused decode step per batch with split-K sums added inside the matmul kernel
              (the tile's last program) and by a separate reduce kernel
  sampler     the fused sampler kernel per batch and warps per row
  cold        per CSM-1B projection and batch class: every tile of a wide sweep timed as it runs in
              the step, its weight read from HBM (a graph of launches over copies of the weight that
              together overflow L2), not replayed from L2 as in `tiles`: the shipped tile with
              pointer loads and with TMA loads, the sweep's tiles with the loads of `--cold-loads`,
              and cuBLAS's matmul alone; the kernels compile first in parallel worker processes
  variants    the whole decode step per batch under each kernel setting (the shipped tiles or the
              cold sweep's, split-K sums in-kernel, sampler warps, programmatic dependent launch,
              TMA loads, cuBLAS's matmuls instead of the fused projections),
              with the frame's codes compared to the shipped setting's

    PYTHONPATH=. python3 benchmarks/bench_fused_linear.py      # writes $OUT/<date>-<gpu>-fused-linear.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from numerics import rel_err

from serve_app.model import fast_step
from serve_app.model.fast_step import FastStep
from serve_app.model.kernels import fused_linear as fl
from serve_app.model.tiny import CSM_1B_CONFIG as CSM_1B
from serve_app.model.tiny import random_model

SHAPES = {  # name: (N, K, kind); kind: norm | residual | gate_up (norm, SwiGLU, (2N, K) weight) | head (norm, (K, N) weight)
    "backbone.qkv": (3072, 2048, "norm"),
    "backbone.wo": (2048, 2048, "residual"),
    "backbone.w13": (8192, 2048, "gate_up"),
    "backbone.w2": (2048, 8192, "residual"),
    "depth.qkv": (1536, 1024, "norm"),
    "depth.wo": (1024, 1024, "residual"),
    "depth.w13": (8192, 1024, "gate_up"),
    "depth.w2": (1024, 8192, "residual"),
    "depth.head": (2048, 1024, "head"),
}


def graph_us(fn: Callable[[], Any], replays: int = 50) -> float:
    """Mean µs of one replay of `fn` captured as a CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000 / replays


def sweep_configs(m: int, k: int, gate_up: bool) -> list[dict[str, int]]:
    """Candidate tiles for a batch of m rows and a reduction of k (gate/up: no split-K)."""
    if m <= 16:
        grid = [(16, bn, bk, s, 4) for bn in (16, 32, 64) for bk in (128, 256) for s in (1, 2, 4, 8)]
    elif m <= 64:
        grid = [(m, bn, bk, s, 4) for bn in (16, 32, 128) for bk in (64, 128) for s in (1, 2, 4)]
    else:
        grid = [(64, bn, 64, s, 4) for bn in (16, 32, 64, 128) for s in (1, 2, 4)]
        grid += [(128, bn, 64, s, 8) for bn in (32, 64) for s in (1, 2)]
    return [
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": s, "num_warps": w, "num_stages": 3}
        for bm, bn, bk, s, w in grid
        if s * bk <= k and not (gate_up and s > 1)
    ]


Case = tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]


def tile_case(m: int, n: int, k: int, kind: str, seed: int) -> Case:
    """Random inputs for one projection: (the PyTorch ops it replaces, the fused kernel)."""
    inputs = cold_inputs(m, n, k, kind, 1, seed)
    x, (w,), norm, residual = inputs["x"], inputs["ws"], inputs["norm"], inputs["residual"]

    def reference() -> torch.Tensor:
        if norm is not None:
            h = x.float()
            h = norm * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)
            if kind != "gate_up":
                return F.linear(h, w)
            gate, up = F.linear(h, w).chunk(2, dim=-1)
            return F.silu(gate) * up
        return residual + F.linear(x, w)

    def fused() -> torch.Tensor:
        return fl.launch(x, w, norm, residual, 1e-5, kind == "gate_up")

    return reference, fused


def tiles(batches: list[int], budget_s: float, shapes: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    t_end = time.perf_counter() + budget_s
    for seed, m in enumerate(batches):
        for name in shapes:
            n, k, kind = SHAPES[name]
            if time.perf_counter() > t_end:
                return rows
            reference, fused = tile_case(m, n, k, kind, seed)
            row: dict[str, Any] = {
                "shape": name,
                "m": m,
                "n": n,
                "k": k,
                "torch_us": round(graph_us(reference), 2),
            }
            fl.CONFIG_OVERRIDES.clear()
            row["rel_err"] = rel_err(fused().float(), reference().float())
            row["heuristic"] = fl.tiles_for(m, n, k, kind == "gate_up")
            row["heuristic_us"] = round(graph_us(fused), 2)
            best = (row["heuristic_us"], row["heuristic"])
            for cfg in sweep_configs(m, k, kind == "gate_up"):
                fl.CONFIG_OVERRIDES[(m, n, k)] = cfg
                try:
                    us = graph_us(fused)
                except Exception as exc:  # noqa: BLE001  # a tile that does not fit (shared memory): skip it
                    print("skip", name, m, cfg, type(exc).__name__, flush=True)
                    continue
                if us < best[0]:
                    best = (round(us, 2), cfg)
            fl.CONFIG_OVERRIDES[(m, n, k)] = best[1]
            row["best_rel_err"] = rel_err(fused().float(), reference().float())
            fl.CONFIG_OVERRIDES.clear()
            row["best_us"], row["best"] = best
            row["gb_per_s_best"] = round(n * k * 2 / (best[0] * 1e-6) / 1e9, 1)
            rows.append(row)
            print("tile", row, flush=True)
    return rows


L2_OVERFLOW_BYTES = 256 << 20
"""Weight bytes one timed sequence streams: five times an H100/H200's 50 MB L2, so every launch
reads its weight from HBM as it does inside the step."""

COLD_CLASSES = {16: 1, 64: 64, 128: 128, 256: 256}
"""Batch class (`fl.batch_class`) → the batch its tiles are timed at."""


def cold_candidates(m: int, k: int, gate_up: bool) -> list[dict[str, int]]:
    """The sweep's tiles for a batch of m rows and a reduction of k (gate/up: no split-K)."""
    if m <= 16:
        bms, bns, bks, splits = (16,), (32, 64, 128), (128, 256), (1, 2, 4, 8, 16)
        pipes = ((4, 3), (4, 4), (8, 4))
    elif m <= 64:
        bms, bns, bks, splits, pipes = (32, 64), (32, 64, 128), (64, 128), (1, 2, 4), ((4, 3), (4, 4))
    elif m <= 128:
        bms, bns, bks, splits = (64, 128), (32, 64, 128), (64, 128), (1, 2, 4)
        pipes = ((4, 3), (4, 4), (8, 3), (8, 4))
    else:
        bms, bns, bks, splits, pipes = (64, 128), (64, 128), (64, 128), (1, 2), ((4, 3), (8, 3), (8, 4))
    return [
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": s, "num_warps": w, "num_stages": st}
        for bm in bms
        for bn in bns
        for bk in bks
        for s in splits
        for w, st in pipes
        if s * bk <= k and not (gate_up and s > 1)
    ]


def cold_inputs(m: int, n: int, k: int, kind: str, copies: int, seed: int = 0) -> dict[str, Any]:
    """x, the norm weight, the residual and `copies` weights of one projection (bf16, on the GPU)."""
    gen = torch.Generator("cuda").manual_seed(seed)
    dev, dtype = "cuda", torch.bfloat16
    rows = 2 * n if kind == "gate_up" else n
    if kind == "head":
        ws = [(torch.randn(k, n, device=dev, dtype=dtype, generator=gen) * 0.02).t() for _ in range(copies)]
    else:
        ws = [torch.randn(rows, k, device=dev, dtype=dtype, generator=gen) * 0.02 for _ in range(copies)]
    return {
        "x": torch.randn(m, k, device=dev, dtype=dtype, generator=gen),
        "ws": ws,
        "norm": torch.rand(k, device=dev, dtype=dtype, generator=gen) + 0.5 if kind != "residual" else None,
        "residual": torch.randn(m, n, device=dev, dtype=dtype, generator=gen) if kind == "residual" else None,
        "gate_up": kind == "gate_up",
    }


Task = tuple[int, str, dict[str, int], bool]
"""(batch, shape, tile, TMA loads) of the cold sweep."""


def cold_launches(inputs: dict[str, Any]) -> Callable[[], None]:
    """One launch per weight copy, as the step launches them."""

    def run() -> None:
        for w in inputs["ws"]:
            fl.launch(inputs["x"], w, inputs["norm"], inputs["residual"], 1e-5, inputs["gate_up"])

    return run


def cublas_launches(inputs: dict[str, Any]) -> Callable[[], None]:
    """cuBLAS's matmul alone (no norm, activation or residual) per weight copy: a floor for the
    unfused path."""

    def run() -> None:
        for w in inputs["ws"]:
            F.linear(inputs["x"], w)

    return run


def cold_tasks(shapes: list[str], classes: list[int], tma: bool) -> list[Task]:
    """Every (batch, shape, tile, TMA loads) the cold sweep times: for each pair the shipped tile
    first (with the sweep's loads, then with the others), then the sweep's tiles."""
    tasks: list[Task] = []
    for cls in classes:
        m = COLD_CLASSES[cls]
        for name in shapes:
            n, k, kind = SHAPES[name]
            shipped = fl.tiles_for(cls, n, k, kind == "gate_up")
            cands = [c for c in cold_candidates(m, k, kind == "gate_up") if c != shipped]
            tasks += [(m, name, shipped, tma), (m, name, shipped, not tma)]
            tasks += [(m, name, cfg, tma) for cfg in cands]
    return tasks


def _compile_worker(tasks: list[Task]) -> list[int]:
    """Compile (by running once) each task's kernel; the indices of those that failed."""
    failed = []
    cache: dict[tuple[int, str], dict[str, Any]] = {}
    for i, (m, name, cfg, tma) in enumerate(tasks):
        n, k, kind = SHAPES[name]
        inputs = cache.get((m, name))
        if inputs is None:
            cache.clear()
            inputs = cache[(m, name)] = cold_inputs(m, n, k, kind, 1)
        fl.CONFIG_OVERRIDES[(m, n, k)] = cfg
        fl.TMA_MIN_ROWS = 1 if tma else None
        try:
            cold_launches(inputs)()
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001  # a tile that does not fit: the sweep skips it
            failed.append(i)
    return failed


def precompile(tasks: list[Task], workers: int) -> set[int]:
    """Compile every task's kernel in worker processes sharing Triton's disk cache (compiling is
    CPU-bound and serial in one process), each distinct kernel once; the indices of the tasks whose
    kernel failed to compile or launch."""
    import concurrent.futures as cf
    import multiprocessing as mp

    def kernel_of(task: Task) -> tuple[Any, ...]:
        m, name, cfg, tma = task  # the shapes differ only in values the kernel is not specialised on
        return (m, SHAPES[name][2], tuple(sorted(cfg.items())), tma, tma and name == "depth.head")

    first: dict[tuple[Any, ...], int] = {}
    for i, task in enumerate(tasks):
        first.setdefault(kernel_of(task), i)
    unique = list(first.values())
    shards = [unique[i::workers] for i in range(workers)]
    failed_kernels: set[tuple[Any, ...]] = set()
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {
            pool.submit(_compile_worker, [tasks[i] for i in shard]): shard for shard in shards if shard
        }
        for future in cf.as_completed(futures):
            shard = futures[future]
            failed_kernels |= {kernel_of(tasks[shard[j]]) for j in future.result()}
    return {i for i, task in enumerate(tasks) if kernel_of(task) in failed_kernels}


def cold(
    shapes: list[str], classes: list[int], tma: bool, budget_s: float, workers: int
) -> tuple[list[dict[str, Any]], dict[Any, Any]]:
    """The cold sweep's rows, and the table of its fastest tiles with the sweep's loads
    (`fl.TUNED`'s format)."""
    tasks = cold_tasks(shapes, classes, tma)
    t0 = time.perf_counter()
    failed = precompile(tasks, workers)
    print(
        f"cold: compiled {len(tasks)} kernels ({len(failed)} failed) in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    t_end = time.perf_counter() + budget_s
    by_pair: dict[tuple[int, str], list[tuple[int, dict[str, int], bool]]] = {}
    for i, (m, name, cfg, task_tma) in enumerate(tasks):
        by_pair.setdefault((m, name), []).append((i, cfg, task_tma))
    rows, table = [], {}
    for (m, name), cands in by_pair.items():
        if time.perf_counter() > t_end:
            print("cold: out of time", flush=True)
            break
        n, k, kind = SHAPES[name]
        weight_bytes = (2 * n if kind == "gate_up" else n) * k * 2
        inputs = cold_inputs(m, n, k, kind, max(4, -(-L2_OVERFLOW_BYTES // weight_bytes)))
        run = cold_launches(inputs)
        per_launch = len(inputs["ws"])
        timed, other_loads_us = [], None
        saved_tma = fl.TMA_MIN_ROWS
        for i, cfg, task_tma in cands:
            if i in failed:
                continue
            fl.CONFIG_OVERRIDES[(m, n, k)] = cfg
            fl.TMA_MIN_ROWS = 1 if task_tma else None
            try:
                us = graph_us(run, 10) / per_launch
            except Exception as exc:  # noqa: BLE001
                print("cold: skip", name, m, cfg, type(exc).__name__, flush=True)
                continue
            finally:
                fl.TMA_MIN_ROWS = saved_tma
            if task_tma == tma:
                timed.append((us, cfg))
            else:
                other_loads_us = us
        fl.CONFIG_OVERRIDES.clear()
        cublas_us = graph_us(cublas_launches(inputs), 10) / per_launch
        if not timed:
            continue
        shipped_us = timed[0][0] if cands[0][0] not in failed else None
        best_us, best = min(timed, key=lambda t: t[0])
        cls = next(c for c, mm in COLD_CLASSES.items() if mm == m)
        table[(cls, n, k)] = tuple(
            best[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K", "num_warps", "num_stages")
        )
        row = {
            "shape": name,
            "m": m,
            "batch_class": cls,
            "weight_mb": round(weight_bytes / 1e6, 1),
            "tiles_timed": len(timed),
            "shipped": cands[0][1],
            "shipped_us": round(shipped_us, 2) if shipped_us is not None else None,
            "tma_loads": tma,
            "shipped_other_loads_us": round(other_loads_us, 2) if other_loads_us is not None else None,
            "cublas_matmul_us": round(cublas_us, 2),
            "best": best,
            "best_us": round(best_us, 2),
            "best_gb_per_s": round(weight_bytes / (best_us * 1e-6) / 1e9, 1),
        }
        rows.append(row)
        print("cold", row, flush=True)
    return rows, table


def decode_frame(
    fast: FastStep,
    embeds: torch.Tensor,
    positions: torch.Tensor,
    kv_len: int,
    sampling: tuple[torch.Tensor, ...],
) -> torch.Tensor:
    """One decode step: backbone, then the frame's 32 codebooks."""
    return fast.depth_frame(fast.backbone_step(embeds, positions, kv_len), *sampling)


@torch.inference_mode()
def step(batches: list[int], kv_len: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    model = random_model(CSM_1B, device="cuda").eval().to(torch.bfloat16)
    model.setup_caches(max(batches))
    d = CSM_1B.backbone.dim
    gen = torch.Generator("cuda").manual_seed(1)
    rows = []
    for b in batches:
        embeds = torch.randn(b, d, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02
        positions = torch.full((b,), kv_len - 1, device="cuda", dtype=torch.long)
        ones = torch.ones(b, device="cuda", dtype=torch.long)
        sampling = (ones.float() * 0.9, ones * 50, torch.arange(b, device="cuda"), ones)
        row: dict[str, Any] = {"batch": b, "kv_window": kv_len}
        for label, limit in (("cublas", 0), ("fused", max(batches))):
            fast = FastStep(model, 2048, fused_attention=True, linear_max_batch=limit)
            ms = (
                graph_us(functools.partial(decode_frame, fast, embeds, positions, kv_len, sampling), 20)
                / 1000
            )
            row[f"{label}_ms"] = round(ms, 3)
            row[f"{label}_audio_s_per_s_bound"] = round(b * 0.08 / (ms / 1000), 1)
        row["speedup"] = round(row["cublas_ms"] / row["fused_ms"], 2)
        rows.append(row)
        print("step", row, flush=True)
    # Agreement at batch 4: the same inputs through both paths (greedy).
    b = 4
    embeds = torch.randn(b, d, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02
    positions = torch.arange(b, device="cuda") + 10
    ones = torch.ones(b, device="cuda", dtype=torch.long)
    out = {}
    for label, limit in (("cublas", 0), ("fused", 128)):
        fast = FastStep(model, 2048, fused_attention=True, linear_max_batch=limit)
        h = fast.backbone_step(embeds, positions, kv_len)
        out[label] = (h.float(), fast.depth_frame(h, ones.float(), ones, ones, ones))
    head = model.codebook0_head.weight.float()
    agreement = {
        "hidden_rel_err": rel_err(out["fused"][0], out["cublas"][0]),
        "codebook0_logits_rel_err": rel_err(out["fused"][0] @ head.T, out["cublas"][0] @ head.T),
        "greedy_codebook0_agreement": float(out["fused"][1][:, 0].eq(out["cublas"][1][:, 0]).float().mean()),
    }
    print("agreement", agreement, flush=True)
    return rows, agreement


@torch.inference_mode()
def reduce_strategies(batches: list[int], kv_len: int) -> list[dict[str, Any]]:
    """The fused step's time with split-K partial sums added in-kernel vs by a reduce kernel."""
    model = random_model(CSM_1B, device="cuda").eval().to(torch.bfloat16)
    model.setup_caches(max(batches))
    gen = torch.Generator("cuda").manual_seed(1)
    default = fl.IN_KERNEL_REDUCE_MAX_ROWS
    rows = []
    try:
        for b in batches:
            embeds = torch.randn(b, CSM_1B.backbone.dim, device="cuda", dtype=torch.bfloat16, generator=gen)
            positions = torch.full((b,), kv_len - 1, device="cuda", dtype=torch.long)
            ones = torch.ones(b, device="cuda", dtype=torch.long)
            sampling = (ones.float() * 0.9, ones * 50, torch.arange(b, device="cuda"), ones)
            row: dict[str, Any] = {"batch": b, "kv_window": kv_len, "default_in_kernel": b <= default}
            for label, limit in (("in_kernel", 1 << 30), ("reduce_kernel", 0)):
                fl.IN_KERNEL_REDUCE_MAX_ROWS = limit
                fast = FastStep(model, 2048, fused_attention=True, linear_max_batch=1 << 16)
                frame = functools.partial(decode_frame, fast, embeds * 0.02, positions, kv_len, sampling)
                row[f"{label}_ms"] = round(graph_us(frame, 20) / 1000, 3)
            rows.append(row)
            print("reduce", row, flush=True)
    finally:
        fl.IN_KERNEL_REDUCE_MAX_ROWS = default
    return rows


def sampler_warps(batches: list[int], vocab: int = 2048) -> list[dict[str, Any]]:
    """µs per call of the sampler kernel (one codebook) by batch and warps per program."""
    from serve_app.model.kernels import sampling as ks
    from serve_app.model.sampling import noise_columns

    gen = torch.Generator("cuda").manual_seed(2)
    columns = noise_columns(vocab, "cuda")
    default, fast, by_bits, rows = ks.NUM_WARPS, ks.TOP_K_FAST, ks.KTH_BY_BITS, []
    try:
        for b in batches:
            logits = torch.randn(b, vocab + 3, device="cuda", dtype=torch.bfloat16, generator=gen)
            ones = torch.ones(b, device="cuda", dtype=torch.long)
            args = (logits, ones.float() * 0.9, ones * 50, torch.arange(b, device="cuda"), ones, 5, columns)
            row: dict[str, Any] = {"batch": b, "default_warps": default}
            for warps in (1, 2, 4, 8, 16):  # k = 50 through the sorted row
                ks.NUM_WARPS, ks.TOP_K_FAST = warps, 0
                row[f"warps_{warps}_us"] = round(graph_us(functools.partial(ks.sample_top_k, *args)), 2)
            for warps in (4, 8, 16):  # ... and through the bitonic top-64
                ks.NUM_WARPS, ks.TOP_K_FAST = warps, 64
                row[f"top64_warps_{warps}_us"] = round(graph_us(functools.partial(ks.sample_top_k, *args)), 2)
            for warps in (4, 8, 16):  # ... and bit by bit
                ks.NUM_WARPS, ks.TOP_K_FAST, ks.KTH_BY_BITS = warps, 64, True
                row[f"bits_warps_{warps}_us"] = round(graph_us(functools.partial(ks.sample_top_k, *args)), 2)
            ks.KTH_BY_BITS = by_bits  # the next batch's rows above run without it
            rows.append(row)
            print("sampler", row, flush=True)
    finally:
        ks.NUM_WARPS, ks.TOP_K_FAST, ks.KTH_BY_BITS = default, fast, by_bits
    return rows


VARIANTS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "in_kernel_16": {"in_kernel_rows": 16},
    "sampler_16_warps": {"sampler_warps": 16},
    "sampler_sorted": {"sampler_top_k_fast": 0},  # every row's k-th score from the sorted row
    "sampler_bits": {"sampler_kth_by_bits": True},  # ... bit by bit
    "pdl_wait": {"pdl": "wait"},
    "pdl_early": {"pdl": "early"},
    "cold_tiles": {"tiles": "cold"},
    "tma_32": {"tma_rows": 32},
    "tma_32_cold_tiles": {"tma_rows": 32, "tiles": "cold"},
    "all_wait": {"tiles": "cold", "in_kernel_rows": 16, "sampler_warps": 16, "pdl": "wait"},
    "all_early": {"tiles": "cold", "in_kernel_rows": 16, "sampler_warps": 16, "pdl": "early"},
    "cublas": {"linear_max_batch": 0},  # the fused attention, cuBLAS's matmuls
    "gathered_inputs": {"sampler_copies_inputs": False},  # the depth step gathers its inputs itself
    "eager_frame_start": {"fused_frame_start": False},  # the frame's first depth pass eager
    "unfolded_attention": {"fold_rows": 0},  # every decode attention in a launch of its own
    "folded_attention_2": {"fold_rows": 2},  # attention inside the QKV launch up to 2 rows
    "folded_attention_4": {"fold_rows": 4},
    "step_launches": {"depth_loop": False},  # a one-row frame's depth steps as launches, not one loop
}
"""Kernel settings the `variants` section times, each against the shipped defaults."""


@contextlib.contextmanager
def kernel_settings(setting: dict[str, Any], cold_table: dict[Any, Any] | None) -> Iterator[None]:
    """Apply one `VARIANTS` setting to the kernel modules' switches, and restore them after."""
    from serve_app.model.kernels import pdl
    from serve_app.model.kernels import sampling as ks

    saved = (
        fl.TUNED, fl.IN_KERNEL_REDUCE_MAX_ROWS, fl.TMA_MIN_ROWS, ks.NUM_WARPS, pdl.MODE, ks.TOP_K_FAST,
        fast_step.SAMPLER_COPIES_INPUTS, fast_step.FUSED_FRAME_START, fl.FOLD_ATTENTION_MAX_ROWS,
        fast_step.DEPTH_LOOP, ks.KTH_BY_BITS,
    )
    try:
        if setting.get("tiles") == "cold":
            if not cold_table:
                raise RuntimeError("no cold sweep table")
            fl.TUNED = {**fl.TUNED, **cold_table}
        fl.IN_KERNEL_REDUCE_MAX_ROWS = setting.get("in_kernel_rows", fl.IN_KERNEL_REDUCE_MAX_ROWS)
        fl.TMA_MIN_ROWS = setting.get("tma_rows", fl.TMA_MIN_ROWS)
        ks.NUM_WARPS = setting.get("sampler_warps", ks.NUM_WARPS)
        ks.TOP_K_FAST = setting.get("sampler_top_k_fast", ks.TOP_K_FAST)
        ks.KTH_BY_BITS = setting.get("sampler_kth_by_bits", ks.KTH_BY_BITS)
        pdl.MODE = setting.get("pdl", pdl.MODE)
        fast_step.SAMPLER_COPIES_INPUTS = setting.get("sampler_copies_inputs", fast_step.SAMPLER_COPIES_INPUTS)
        fast_step.FUSED_FRAME_START = setting.get("fused_frame_start", fast_step.FUSED_FRAME_START)
        fl.FOLD_ATTENTION_MAX_ROWS = setting.get("fold_rows", fl.FOLD_ATTENTION_MAX_ROWS)
        fast_step.DEPTH_LOOP = setting.get("depth_loop", fast_step.DEPTH_LOOP)
        yield
    finally:
        (
            fl.TUNED, fl.IN_KERNEL_REDUCE_MAX_ROWS, fl.TMA_MIN_ROWS, ks.NUM_WARPS, pdl.MODE, ks.TOP_K_FAST,
            fast_step.SAMPLER_COPIES_INPUTS, fast_step.FUSED_FRAME_START, fl.FOLD_ATTENTION_MAX_ROWS,
            fast_step.DEPTH_LOOP, ks.KTH_BY_BITS,
        ) = saved


@torch.inference_mode()
def variants(
    batches: list[int],
    kv_len: int,
    cold_table: dict[Any, Any] | None,
    names: list[str],
    rows: list[dict[str, Any]],
    on_row: Callable[[], None],
) -> None:
    """The graphed decode step (backbone step + 31-codebook depth frame) per batch and `VARIANTS`
    setting, appended to `rows` (`on_row` after each); each setting's codes against the shipped
    setting's (identical where only the launch mode differs, since no arithmetic changes)."""
    model = random_model(CSM_1B, device="cuda").eval().to(torch.bfloat16)
    model.setup_caches(max(batches))
    gen = torch.Generator("cuda").manual_seed(1)
    for b in batches:
        embeds = (
            torch.randn(b, CSM_1B.backbone.dim, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02
        )
        positions = torch.full((b,), kv_len - 1, device="cuda", dtype=torch.long)
        ones = torch.ones(b, device="cuda", dtype=torch.long)
        sampling = (ones.float() * 0.9, ones * 50, torch.arange(b, device="cuda"), ones)
        row: dict[str, Any] = {"batch": b, "kv_window": kv_len}
        codes: dict[str, torch.Tensor] = {}
        for name in ["shipped", *(n for n in names if n != "shipped")]:
            setting = VARIANTS[name]
            try:
                with kernel_settings(setting, cold_table):
                    linear_max_batch = setting.get("linear_max_batch", 1 << 16)
                    fast = FastStep(
                        model,
                        2048,
                        fused_attention=True,
                        linear_max_batch=linear_max_batch,
                    )
                    frame = functools.partial(decode_frame, fast, embeds, positions, kv_len, sampling)
                    row[f"{name}_ms"] = round(graph_us(frame, 20) / 1000, 3)
                    codes[name] = frame().clone()
            except Exception as exc:  # noqa: BLE001  # one failed setting must not end the section
                row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            if name != "shipped" and "shipped" in codes:
                row[f"{name}_codes_equal"] = round(float(codes[name].eq(codes["shipped"]).float().mean()), 4)
            row[f"{name}_end_codes"] = int(codes[name].eq(0).all(dim=1).sum())
        rows.append(row)
        on_row()
        print("variants", row, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tile-batches", default="1,16,32,64,128")
    p.add_argument("--tile-budget-s", type=float, default=240)
    p.add_argument("--step-batches", default="1,2,4,8,16,32,64,128")
    p.add_argument("--shapes", default=",".join(SHAPES), help="projections to sweep")
    p.add_argument("--variant-batches", default="1,128,256,16,64")
    p.add_argument("--variants", default=",".join(VARIANTS), help="settings the variants section times")
    p.add_argument("--cold-table", help="a results file whose cold_table the variants use (no sweep)")
    p.add_argument("--cold-budget-s", type=float, default=240, help="timing budget of the cold sweep")
    p.add_argument("--cold-classes", default=",".join(map(str, COLD_CLASSES)), help="batch classes it sweeps")
    p.add_argument("--cold-loads", choices=("pointers", "tma"), default="pointers", help="the sweep's loads")
    p.add_argument("--compile-workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--skip", default="")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    gpu = torch.cuda.get_device_name(0)
    out_dir = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"\W+", "-", gpu).lower()
    path = out_dir / f"{dt.date.today().isoformat()}-{tag}-fused-linear.json"
    res: dict[str, Any] = {
        "benchmark": "fused-linear",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "PYTHONPATH=. python3 benchmarks/bench_fused_linear.py " + " ".join(sys.argv[1:]),
        "device": gpu,
        "torch": torch.__version__,
        "dtype": "bfloat16",
    }

    def save() -> None:
        path.write_text(json.dumps(res, indent=1))

    cold_table = None
    if args.cold_table:
        loaded = json.loads(Path(args.cold_table).read_text())["cold_table"]
        cold_table = {tuple(map(int, key.split("/"))): tuple(v) for key, v in loaded.items()}
    elif "cold" not in skip:
        classes = [int(c) for c in args.cold_classes.split(",")]
        res["cold"], cold_table = cold(
            args.shapes.split(","), classes, args.cold_loads == "tma", args.cold_budget_s, args.compile_workers
        )
        res["cold_table"] = {f"{c}/{n}/{k}": list(v) for (c, n, k), v in sorted(cold_table.items())}
        save()
    if "variants" not in skip:
        batches = [int(b) for b in args.variant_batches.split(",")]
        res["variants"] = []
        variants(batches, 256, cold_table, args.variants.split(","), res["variants"], save)
    if "step" not in skip:
        res["step"], res["agreement"] = step([int(b) for b in args.step_batches.split(",")], 256)
        save()
    if "reduce" not in skip:
        res["reduce"] = reduce_strategies([int(b) for b in args.step_batches.split(",")], 256)
        save()
    if "sampler" not in skip:
        res["sampler"] = sampler_warps([int(b) for b in args.step_batches.split(",")])
        save()
    if "tiles" not in skip:
        batches = [int(b) for b in args.tile_batches.split(",")]
        res["tiles"] = tiles(batches, args.tile_budget_s, args.shapes.split(","))
        save()
    print("wrote", path)


if __name__ == "__main__":
    main()
