"""Decode-step projections with their neighbours fused in: one Triton kernel per matmul.

In a decode step every row is one token, so each projection is a skinny, memory-bound matmul, and
the step is bound by kernel count: per layer, RMSNorm, the SwiGLU activation and the residual adds
are six more launches around the four matmuls. Here they ride inside the matmul kernels:

- RMSNorm prologue, `rmsnorm(x) @ W^T`: the norm is a per-row scale, so each x tile is multiplied
  by the norm weight on its way into the dot, the row's sum of squares accumulates in the same
  pass, and 1 / rms scales the finished rows.
- Gate/up epilogue, `silu(x W_gate^T) * (x W_up^T)` for the fused (2N, K) gate/up weight: each
  program accumulates matching gate and up columns side by side and writes the activation, so the
  down projection reads N columns, not 2N, and no activation kernel runs.
- Residual epilogue, `residual + x @ W^T`.
- Split-K: a skinny matmul with a long reduction (the down projection, K = 8192) has too few
  output tiles to keep the GPU's memory pipes busy, and one program streaming all of K is
  latency-bound. Such matmuls split K over programs that write fp32 partial sums; a small
  row-parallel kernel adds them in a fixed order (deterministic, unlike atomic adds) and applies
  the norm scale and the residual. For a small batch (up to `IN_KERNEL_REDUCE_MAX_ROWS` rows) the
  programs count themselves in on a per-tile counter instead, and the tile's last program adds
  the partial sums in the same order and runs the epilogue: no second launch, which at batch 1 is
  about a third of a frame's launches.
- Attention fold, a one-row decode step's QKV projection (`fused_qkv_attention`): each kv head's
  last finished column tile runs that head's decode attention (`decode_attention.attend_row`) in
  the same launch, so no attention kernel follows.
- Launch: every kernel may start as a dependent of the one before (`pdl`), waiting for it first.
- Loads: batches above 16 rows read their tiles through TMA descriptors (`TMA_MIN_ROWS`), smaller
  ones through masked pointer loads; the arithmetic is the same.

So a layer is four matmul launches (plus a reduce per split one above that size) and attention (inside
the QKV launch at one row). W may be any 2-D view
(N, K): the depth decoder's per-codebook heads are (K, N) tensors read through a transposed view.

Numerics: fp32 accumulation; the activation and the residual add round where the eager model
rounds; the norm rounds once (x * weight) instead of twice (x / rms, then * weight): within bf16
tolerance of the reference, checked by the tests.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from serve_app.model.kernels import pdl
from serve_app.model.kernels.counters import device_counters
from serve_app.model.kernels.decode_attention import attend_row, kernel_constants
from serve_app.model.kernels.decode_attention import launch as decode_attention_launch
from serve_app.model.kernels.keys import settle
from serve_app.model.kernels.pdl import enter

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # a Triton without host-side TMA descriptors
    TensorDescriptor = None

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _epilogue(
    acc,
    acc_up,
    sumsq,
    rows,
    cols,
    out_mask,
    out_ptr,
    res_ptr,
    K,
    stride_om,
    stride_rm,
    eps,
    dtype: tl.constexpr,
    NORM: tl.constexpr,
    GATE_UP: tl.constexpr,
    RESIDUAL: tl.constexpr,
):
    """Finished fp32 sums of a tile → norm scale, activation, residual, store."""
    if NORM:
        rstd = 1.0 / tl.sqrt(sumsq / K + eps)
        acc = acc * rstd[:, None]
        acc_up = acc_up * rstd[:, None]
    out = acc.to(out_ptr.dtype.element_ty)
    if GATE_UP:  # silu(gate) * up, rounded as the eager ops round
        gate = out.to(tl.float32)
        act = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32)
        out = (act * acc_up.to(dtype).to(tl.float32)).to(out_ptr.dtype.element_ty)
    if RESIDUAL:
        r = tl.load(res_ptr + rows[:, None] * stride_rm + cols[None, :], mask=out_mask, other=0.0)
        out = (r.to(tl.float32) + out.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], out, mask=out_mask)


@triton.jit
def _weight_tile(
    w_ptr, n0, k0, cols, col_ok, k, k_ok, stride_wn, stride_wk, TMA: tl.constexpr, W_TRANSPOSED: tl.constexpr
):
    """The (BLOCK_K, BLOCK_N) tile of W^T at (k0, n0): through the TMA descriptor or by pointers."""
    if TMA:
        if W_TRANSPOSED:
            tile = w_ptr.load([k0, n0])
        else:
            tile = w_ptr.load([n0, k0]).T
    else:
        w_offs = cols[None, :] * stride_wn + k[:, None] * stride_wk
        tile = tl.load(w_ptr + w_offs, mask=col_ok[None, :] & k_ok[:, None], other=0.0)
    return tile


@triton.jit
def _fold_attention(
    pid_n,
    pid_m,
    M,
    qkv_ptr,
    qkv_stride,
    head_lock_ptr,
    pos_ptr,
    cos_ptr,
    sin_ptr,
    k_cache_ptr,
    v_cache_ptr,
    attn_ptr,
    pos_stride,
    cache_s_stride,
    cache_h_stride,
    cache_p_stride,
    scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    H: tl.constexpr,
    HKV: tl.constexpr,
    GROUP: tl.constexpr,
    GP: tl.constexpr,
    HEAD_D: tl.constexpr,
    KEYS_BLOCK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """After a QKV tile is stored: count it in on its kv head's counter; the head's last tile (its
    query heads', key's and value's columns all written) runs the decode attention of that kv head
    for the tile's rows (`decode_attention.attend_row`), so no attention kernel is launched."""
    tl.debug_barrier()  # every thread's stores are issued before the release below
    col = pid_n * BLOCK_N  # a tile lies inside one head: HEAD_D is a multiple of BLOCK_N
    q_width: tl.constexpr = H * HEAD_D
    head = tl.where(col < q_width, col // (GROUP * HEAD_D), ((col - q_width) // HEAD_D) % HKV)
    lock = head_lock_ptr + pid_m * HKV + head
    tiles_per_head: tl.constexpr = (GROUP + 2) * (HEAD_D // BLOCK_N)
    if tl.atomic_add(lock, 1, sem="acq_rel", scope="gpu") == tiles_per_head - 1:
        tl.store(lock, 0)  # zero again for the next launch
        first = pid_m * BLOCK_M
        for b in range(first, tl.minimum(first + BLOCK_M, M)):
            attend_row(
                qkv_ptr, b, head, b, pos_ptr, cos_ptr, sin_ptr, k_cache_ptr, v_cache_ptr, attn_ptr,
                pos_stride, qkv_stride, cache_s_stride, cache_h_stride, cache_p_stride, scale,
                H, HKV, GROUP, GP, HEAD_D, KEYS_BLOCK, PRECISION, True, True,
            )


@triton.jit
def _linear_kernel(
    x_ptr,  # (M, K), unit stride along K; TMA: its descriptor, blocks (BLOCK_M, BLOCK_K)
    w_ptr,  # (N, K) view (GATE_UP: (2N, K), gate rows first): element (n, k) at n * stride_wn + k * stride_wk;
    # TMA: a descriptor of the (N, K) weight, blocks (BLOCK_N, BLOCK_K), or with W_TRANSPOSED of its (K, N) tensor
    out_ptr,  # (M, N)
    part_ptr,  # (SPLIT_K, M, N) fp32 partial sums (SPLIT_K > 1)
    lock_ptr,  # int32 per output tile, zero between launches: its split programs that have finished
    sq_ptr,  # (SPLIT_K, N tiles, M) fp32 partial sums of squares of x (NORM, IN_KERNEL_REDUCE)
    res_ptr,  # (M, N) residual (RESIDUAL)
    g_ptr,  # (K,) RMSNorm weight (NORM)
    pos_ptr,  # ATTEND: (M,) int64 each row's position (< 0: idle), row m being cache slot m
    cos_ptr,  # ATTEND: (P, HEAD_D) fp32 RoPE tables
    sin_ptr,
    k_cache_ptr,  # ATTEND: (S, HKV, P + 1, HEAD_D)
    v_cache_ptr,
    attn_ptr,  # ATTEND: (M, H * HEAD_D) the attention output
    head_lock_ptr,  # ATTEND: int32 per (row tile, kv head), zero between launches
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_wk,
    stride_om,
    stride_rm,
    eps,
    pos_stride,
    cache_s_stride,
    cache_h_stride,
    cache_p_stride,
    attn_scale,
    NORM: tl.constexpr,
    GATE_UP: tl.constexpr,
    RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    IN_KERNEL_REDUCE: tl.constexpr,
    PRECISION: tl.constexpr,
    TMA: tl.constexpr,
    W_TRANSPOSED: tl.constexpr,
    PDL_WAIT: tl.constexpr,
    PDL_EARLY: tl.constexpr,
    ATTEND: tl.constexpr = False,  # the output is a decode step's QKV: fold its attention in
    H: tl.constexpr = 1,
    HKV: tl.constexpr = 1,
    GROUP: tl.constexpr = 1,
    GP: tl.constexpr = 16,
    HEAD_D: tl.constexpr = 2,
    KEYS_BLOCK: tl.constexpr = 16,
):
    enter(PDL_WAIT, PDL_EARLY)
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    col_ok = cols < N
    dtype = out_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    sumsq = tl.zeros((BLOCK_M,), tl.float32)
    k_span = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_start = pid_k * k_span
    for k0 in range(k_start, tl.minimum(K, k_start + k_span), BLOCK_K):
        k = k0 + ks
        k_ok = k < K
        if TMA:  # the copy engine fills shared memory, out-of-range elements as zeros
            a = x_ptr.load([pid_m * BLOCK_M, k0])
        else:
            x_mask = row_ok[:, None] & k_ok[None, :]
            a = tl.load(x_ptr + rows[:, None] * stride_xm + k[None, :], mask=x_mask, other=0.0)
        if NORM:
            af = a.to(tl.float32)
            sumsq += tl.sum(af * af, axis=1)
            g = tl.load(g_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
            a = (af * g[None, :]).to(dtype)
        n0 = pid_n * BLOCK_N
        w = _weight_tile(w_ptr, n0, k0, cols, col_ok, k, k_ok, stride_wn, stride_wk, TMA, W_TRANSPOSED)
        acc += tl.dot(a, w, input_precision=PRECISION)
        if GATE_UP:  # the up rows follow the N gate rows
            up = N + n0
            w_up = _weight_tile(w_ptr, up, k0, N + cols, col_ok, k, k_ok, stride_wn, stride_wk, TMA, W_TRANSPOSED)
            acc_up += tl.dot(a, w_up, input_precision=PRECISION)
    out_mask = row_ok[:, None] & col_ok[None, :]
    if SPLIT_K == 1:
        _epilogue(
            acc, acc_up, sumsq, rows, cols, out_mask, out_ptr, res_ptr, K, stride_om, stride_rm, eps,
            dtype, NORM, GATE_UP, RESIDUAL,
        )
        if ATTEND:
            _fold_attention(
                pid_n, pid_m, M, out_ptr, stride_om, head_lock_ptr, pos_ptr, cos_ptr, sin_ptr, k_cache_ptr,
                v_cache_ptr, attn_ptr, pos_stride, cache_s_stride, cache_h_stride, cache_p_stride,
                attn_scale, BLOCK_M, BLOCK_N, H, HKV, GROUP, GP, HEAD_D, KEYS_BLOCK, PRECISION,
            )
    else:
        tile = part_ptr + rows[:, None] * N + cols[None, :]
        tl.store(tile + pid_k * M * N, acc, mask=out_mask)
        if IN_KERNEL_REDUCE:
            # The tile's last program to finish adds all slices' partial sums in a fixed order
            # (deterministic, unlike atomic adds) and runs the epilogue: no second launch.
            sq = sq_ptr + pid_n * M + rows
            if NORM:
                tl.store(sq + pid_k * tl.num_programs(0) * M, sumsq, mask=row_ok)
            tl.debug_barrier()  # every thread's stores are issued before the release below
            lock = lock_ptr + pid_m * tl.num_programs(0) + pid_n
            if tl.atomic_add(lock, 1, sem="acq_rel", scope="gpu") == SPLIT_K - 1:
                total = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
                sumsq = tl.zeros((BLOCK_M,), tl.float32)
                for s in tl.static_range(SPLIT_K):  # read from L2 (.cg): other SMs wrote them
                    total += tl.load(tile + s * M * N, mask=out_mask, other=0.0, cache_modifier=".cg")
                    if NORM:
                        step = s * tl.num_programs(0) * M
                        sumsq += tl.load(sq + step, mask=row_ok, other=0.0, cache_modifier=".cg")
                tl.store(lock, 0)  # zero again for the next launch
                _epilogue(
                    total, acc_up, sumsq, rows, cols, out_mask, out_ptr, res_ptr, K, stride_om, stride_rm,
                    eps, dtype, NORM, GATE_UP, RESIDUAL,
                )
                if ATTEND:
                    _fold_attention(
                        pid_n, pid_m, M, out_ptr, stride_om, head_lock_ptr, pos_ptr, cos_ptr, sin_ptr,
                        k_cache_ptr, v_cache_ptr, attn_ptr, pos_stride, cache_s_stride, cache_h_stride,
                        cache_p_stride, attn_scale, BLOCK_M, BLOCK_N, H, HKV, GROUP, GP, HEAD_D, KEYS_BLOCK,
                        PRECISION,
                    )


@triton.jit
def _reduce_kernel(
    part_ptr,  # (SPLIT_K, M, N) fp32
    x_ptr,  # (M, K): the norm's input (NORM)
    out_ptr,  # (M, N)
    res_ptr,  # (M, N) residual (RESIDUAL)
    M,
    N,
    K,
    stride_xm,
    stride_om,
    stride_rm,
    eps,
    NORM: tl.constexpr,
    RESIDUAL: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PDL_WAIT: tl.constexpr,
    PDL_EARLY: tl.constexpr,
):
    """Sum split-K partials in a fixed order (deterministic), then the epilogue of `_linear_kernel`."""
    enter(PDL_WAIT, PDL_EARLY)
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = cols < N
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(part_ptr + s * M * N + row * N + cols, mask=ok, other=0.0)
    if NORM:
        sumsq = tl.zeros((BLOCK_K,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            xk = tl.load(x_ptr + row * stride_xm + k, mask=k < K, other=0.0).to(tl.float32)
            sumsq += xk * xk
        acc = acc * (1.0 / tl.sqrt(tl.sum(sumsq, axis=0) / K + eps))
    out = acc.to(out_ptr.dtype.element_ty)
    if RESIDUAL:
        r = tl.load(res_ptr + row * stride_rm + cols, mask=ok, other=0.0)
        out = (r.to(tl.float32) + out.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * stride_om + cols, out, mask=ok)


SMS = 132
"""Streaming multiprocessors of an H100/H200: the grid should give each a few programs."""


def tile_config(m: int, n: int, k: int, gate_up: bool = False) -> dict[str, int]:
    """Tiles for an (m x k) @ (k x n) decode matmul (from sweeps of the CSM-1B shapes on an H200,
    `benchmarks/bench_fused_linear.py`): the smallest row tile that holds the batch (tensor-core
    tiles start at 16 rows), wide column tiles only for wide outputs, and the K dimension split
    across programs until the grid covers the GPU twice: one program streaming a long K alone is
    latency-bound, not bandwidth-bound."""
    block_m = min(64, max(16, triton.next_power_of_2(m)))
    block_n = 64 if n >= 8192 else (32 if n >= 2048 else 16)
    if block_m >= 32 and n >= 8192:
        block_n = 128
    block_k = 256 if block_m <= 16 else 128
    block_k = min(block_k, max(16, triton.next_power_of_2(k)))
    programs = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    split = 1
    while not gate_up and programs * split < 2 * SMS and k // (split * 2) >= 2 * block_k:
        split *= 2
    return {
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "BLOCK_K": block_k,
        "SPLIT_K": split,
        "num_warps": 4,
        "num_stages": 3,
    }


TUNED: dict[tuple[int, int, int], tuple[int, int, int, int, int, int]] = {
    # (batches up to, N, K): (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages)
    (16, 1024, 1024): (16, 32, 256, 1, 4, 4),  # depth attention output
    (16, 1536, 1024): (16, 32, 128, 8, 4, 4),  # depth QKV
    (16, 2048, 1024): (16, 64, 128, 8, 4, 4),  # depth codebook head
    (16, 8192, 1024): (16, 64, 256, 1, 4, 3),  # depth gate/up
    (16, 1024, 8192): (16, 32, 256, 4, 4, 4),  # depth down
    (16, 2048, 2048): (16, 64, 128, 4, 4, 4),  # backbone attention output
    (16, 3072, 2048): (16, 128, 128, 4, 8, 4),  # backbone QKV
    (16, 8192, 2048): (16, 64, 256, 1, 4, 3),  # backbone gate/up
    (16, 2048, 8192): (16, 32, 128, 4, 4, 4),  # backbone down
    (64, 1024, 1024): (64, 32, 128, 1, 4, 4),
    (64, 1536, 1024): (64, 32, 128, 4, 4, 3),
    (64, 2048, 1024): (64, 32, 128, 4, 4, 4),
    (64, 8192, 1024): (64, 64, 128, 1, 4, 3),
    (64, 1024, 8192): (64, 32, 128, 4, 4, 4),
    (64, 2048, 2048): (64, 32, 128, 4, 4, 4),
    (64, 3072, 2048): (64, 32, 128, 4, 4, 3),
    (64, 8192, 2048): (32, 64, 128, 1, 4, 3),
    (64, 2048, 8192): (64, 64, 128, 4, 4, 4),
    (128, 1024, 1024): (64, 32, 128, 1, 4, 4),
    (128, 1536, 1024): (64, 32, 128, 4, 4, 3),
    (128, 2048, 1024): (64, 32, 128, 2, 4, 3),
    (128, 8192, 1024): (64, 128, 64, 1, 4, 3),
    (128, 1024, 8192): (128, 32, 128, 4, 4, 4),
    (128, 2048, 2048): (64, 64, 128, 2, 4, 4),
    (128, 3072, 2048): (64, 64, 64, 4, 4, 3),
    (128, 8192, 2048): (64, 128, 64, 1, 4, 4),
    (128, 2048, 8192): (128, 64, 128, 4, 8, 4),
    (256, 1024, 1024): (64, 64, 128, 1, 8, 4),
    (256, 1536, 1024): (64, 64, 128, 2, 4, 3),
    (256, 2048, 1024): (64, 64, 128, 2, 4, 3),
    (256, 8192, 1024): (64, 128, 64, 1, 4, 3),
    (256, 1024, 8192): (64, 64, 128, 2, 8, 4),
    (256, 2048, 2048): (64, 64, 128, 1, 8, 4),
    (256, 3072, 2048): (64, 64, 64, 2, 4, 3),
    (256, 8192, 2048): (64, 128, 64, 1, 4, 3),
    (256, 2048, 8192): (128, 64, 128, 2, 8, 4),
}
"""The fastest tiles for the CSM-1B decode projections by batch class (`batch_class`: the table's
class that holds the batch), output width N and reduction K, from a sweep on an H200 that times
each tile as the step runs it, its weight streamed from HBM rather than replayed from L2
(`bench_fused_linear.py` `cold`). Class 16 with pointer loads
(`benchmarks/results/2026-12-03-1006-nvidia-h200-fused-linear-cold.json`; the whole graphed decode
step with them, against the tiles of the earlier L2-resident sweep: 6.86 vs 7.38 ms at batch 1),
the larger classes with TMA loads (`TMA_MIN_ROWS`; `…-1415-nvidia-h200-fused-linear-tma.json`).
Other shapes follow `tile_config`'s rule."""


def batch_class(m: int) -> int:
    """The batch class whose tiles serve a batch of m rows: the smallest that holds it (the largest
    serves every larger batch)."""
    classes = sorted({cls for cls, _, _ in TUNED})
    return next((cls for cls in classes if m <= cls), classes[-1] if classes else m)


def tiles_for(m: int, n: int, k: int, gate_up: bool = False) -> dict[str, int]:
    """Swept tiles for this shape if there are any, else `tile_config`'s."""
    tuned = TUNED.get((batch_class(m), n, k))
    if tuned is None:
        return tile_config(m, n, k, gate_up)
    block_m, block_n, block_k, split, warps, stages = tuned
    names = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K", "num_warps", "num_stages")
    return dict(zip(names, (block_m, block_n, block_k, 1 if gate_up else split, warps, stages), strict=True))


SHARED_MEMORY_BUDGET = 200 * 1024
"""Bytes of shared memory a program's pipelined tiles may use (an H100/H200 SM has 227 KiB)."""


def fit_shared_memory(cfg: dict[str, int], element_size: int, gate_up: bool, tma: bool = False) -> dict[str, int]:
    """Shrink the K tile (then the pipeline depth) until the staged x and W tiles fit: the bf16
    tiles do; fp32 weights (tests, reference runs) need half the K tile."""
    cfg = dict(cfg)

    def staged() -> int:
        w_tiles = 2 if gate_up else 1
        tile = cfg["BLOCK_M"] * cfg["BLOCK_K"] + w_tiles * cfg["BLOCK_K"] * cfg["BLOCK_N"]
        # Triton buffers stages - 1 tiles of pointer loads; counted as stages for TMA loads, whose
        # swept tiles all fit that way (some larger ones failed to compile in the sweep)
        buffers = cfg["num_stages"] if tma else max(1, cfg["num_stages"] - 1)
        return buffers * tile * element_size

    while staged() > SHARED_MEMORY_BUDGET and cfg["BLOCK_K"] > 32:
        cfg["BLOCK_K"] //= 2
    while staged() > SHARED_MEMORY_BUDGET and cfg["num_stages"] > 1:
        cfg["num_stages"] -= 1
    return cfg


TMA_MIN_ROWS: int | None = 17
"""Batches of at least this many rows (every class above 16) load their x and weight tiles with
the Hopper copy engine (TMA descriptors) instead of pointer arithmetic; None: never. The gate/up
projections gain most (depth gate/up at 128 rows, weight from HBM: 19.6 → 16.4 µs). The whole
graphed decode step on an H200, pointer loads with their tiles vs TMA loads with tiles swept for
them (`bench_fused_linear.py --cold-classes 64,128,256 --cold-loads tma --variants
shipped,tma_32,tma_32_cold_tiles`, `benchmarks/results/2026-12-03-1415-nvidia-h200-fused-linear-tma.json`),
ms per frame: 8.77 vs 7.58 at batch 64, 9.54 vs 8.64 at 128, 13.34 vs 11.49 at 256. TMA loads at
16 rows or fewer were not measured: those batches keep the pointer loads and their tiles."""


def _tma_ready(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether both operands can be described to TMA: a CUDA device of compute capability 9 or
    newer (or Triton's interpreter), one unit-stride dimension per operand, 16-byte aligned."""
    if TMA_MIN_ROWS is None or x.shape[0] < TMA_MIN_ROWS:
        return False
    if x.device.type == "cuda":
        if TensorDescriptor is None or torch.cuda.get_device_capability(x.device)[0] < 9:
            return False
    elif not INTERPRETED:
        return False
    w = weight.t() if weight.stride(0) == 1 and weight.stride(1) != 1 else weight
    return all(
        t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0
        for t in (x, w)
    )


CONFIG_OVERRIDES: dict[tuple[int, int, int], dict[str, int]] = {}
"""Per-(m, n, k) tiles that replace the tuned ones (benchmark sweeps)."""


IN_KERNEL_REDUCE_MAX_ROWS = 16
"""Split matmuls of up to this many rows add their partial sums in the kernel (the tile's last
program), larger ones in a second, row-parallel reduce kernel. The extra launch costs more than the
work at small batches, the serial tail of a tile's last program more at large ones: the whole
decode step on an H200, in-kernel vs reduce kernel, 7.10 vs 7.36 ms at batch 1, 7.34 vs 7.52 at 16,
9.53 vs 9.16 at 32, 11.20 vs 10.66 at 128
(`benchmarks/results/2026-12-03-0728-nvidia-h200-fused-linear.json`), so 16. The tile counters
must exist before any CUDA graph that uses them is captured (`tile_locks`)."""

MAX_TILES = 1 << 14
"""Output tiles of one split-K launch that sums in-kernel (at most 8192 / 16 at the CSM shapes)."""

def tile_locks(device: torch.device) -> torch.Tensor:
    """The device's zeroed int32 counters, one per output tile, of the split-K launches that sum
    in-kernel (`counters`: made before any CUDA-graph capture that uses them)."""
    return device_counters("split-K tile", device, MAX_TILES)


def reserve_tile_locks(device: torch.device) -> None:
    """Make the device's split-K tile counters, and the folded attention's, now (before CUDA graphs
    that use them are captured)."""
    tile_locks(torch.device(device))
    head_locks(torch.device(device))


class DecodeAttention(NamedTuple):
    """A decode step's attention to fold into its QKV projection (`decode_attention`'s inputs but
    the qkv): row m of the projection is the token of cache slot m."""

    positions: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    n_heads: int
    n_kv_heads: int


FOLD_ATTENTION_MAX_ROWS = 1
"""Decode steps of up to this many rows run their attention inside the QKV projection's launch
(`_fold_attention`: each kv head's last tile attends for every row, one row after another), larger
ones in a launch of their own (a program per row and kv head); 0: never. The whole graphed decode
step on an H100, separate → folded: 6.65 → 6.39 ms a frame at one row
(`benchmarks/results/2026-12-06-0437-nvidia-h100-80gb-hbm3-fold-variants.json`), but 6.46 → 7.07 at
two rows and 6.76 → 7.87 at four (`…-0448-…-fold-rows-variants.json`): the serial rows cost more
than the launch saved."""

MAX_HEAD_LOCKS = 1 << 10
"""Counters of the folded attention: one per (row tile, kv head) of a launch."""


def head_locks(device: torch.device) -> torch.Tensor:
    """The device's zeroed int32 counters of the folded attention's kv heads (`counters`)."""
    return device_counters("qkv attention head", device, MAX_HEAD_LOCKS)


def _can_fold(attention: DecodeAttention, m: int, cfg: dict[str, int], in_kernel: bool) -> bool:
    """Whether this launch can run the attention itself: a small decode batch whose column tiles
    each lie inside one head, every tile's sums finished inside the kernel."""
    head_dim = attention.k_cache.shape[-1]
    return (
        m <= FOLD_ATTENTION_MAX_ROWS
        and (cfg["SPLIT_K"] == 1 or in_kernel)
        and head_dim % cfg["BLOCK_N"] == 0
        and triton.cdiv(m, cfg["BLOCK_M"]) * attention.n_kv_heads <= MAX_HEAD_LOCKS
    )


def launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    gate_up: bool = False,
    attention: DecodeAttention | None = None,
) -> torch.Tensor:
    """Run the kernel(s); see `fused_linear`. With `attention` the projection is a decode step's
    QKV and the result its attention output (`fused_qkv_attention`)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    m = x.shape[0]
    n, k = weight.shape
    if gate_up:
        if n % 2:
            raise ValueError(f"a gate/up weight has an even number of rows, got {n}")
        n //= 2
    if x.shape[1] != k:
        raise ValueError(f"x has {x.shape[1]} columns for a weight of {k}")
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out if attention is None else _attend(out, attention)
    cfg = CONFIG_OVERRIDES.get((m, n, k)) or tiles_for(m, n, k, gate_up)
    tma = _tma_ready(x, weight)
    cfg = fit_shared_memory(cfg, weight.element_size(), gate_up, tma)
    if gate_up:
        cfg["SPLIT_K"] = 1  # the activation needs whole sums
    split = cfg["SPLIT_K"]
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(m, cfg["BLOCK_M"]), split)
    res = residual if residual is not None else out
    part = sq = locks = out  # placeholders for pointers the kernel does not read
    in_kernel = split > 1 and m <= IN_KERNEL_REDUCE_MAX_ROWS and grid[0] * grid[1] <= MAX_TILES
    fold = attention is not None and _can_fold(attention, m, cfg, in_kernel)
    if split > 1:
        part = torch.empty(split, m, n, dtype=torch.float32, device=x.device)
    if in_kernel:
        locks = tile_locks(x.device)
        if norm_weight is not None:
            sq = torch.empty(split, grid[0], m, dtype=torch.float32, device=x.device)
    flags = {"NORM": norm_weight is not None, "RESIDUAL": residual is not None} | pdl.launch_options(x.device)
    attended = out
    # The folded attention's pointers and scalars; placeholders where it is off (the kernel reads none).
    fold_tensors: tuple[torch.Tensor, ...] = (out,) * 7
    fold_scalars: tuple[float, ...] = (0, 0, 0, 0, 1.0)
    if fold:
        assert attention is not None
        cache, head_dim = attention.k_cache, attention.k_cache.shape[-1]
        attended = torch.empty(m, attention.n_heads * head_dim, dtype=x.dtype, device=x.device)
        fold_tensors = (
            attention.positions, attention.cos, attention.sin, cache, attention.v_cache, attended,
            head_locks(x.device),
        )
        fold_scalars = (
            attention.positions.stride(0), cache.stride(0), cache.stride(1), cache.stride(2),
            1.0 / math.sqrt(head_dim),
        )
        constants = kernel_constants(attention.n_heads, attention.n_kv_heads, head_dim, cache.dtype)
        flags |= {
            "ATTEND": True, "H": constants["H"], "HKV": constants["HKV"], "GROUP": constants["GROUP"],
            "GP": constants["GP"], "HEAD_D": head_dim, "KEYS_BLOCK": constants["BLOCK_N"],
        }
    x_arg, w_arg = x, weight
    w_transposed = tma and weight.stride(1) != 1
    if tma:
        x_arg = TensorDescriptor.from_tensor(x, [cfg["BLOCK_M"], cfg["BLOCK_K"]])
        if w_transposed:
            w_arg = TensorDescriptor.from_tensor(weight.t(), [cfg["BLOCK_K"], cfg["BLOCK_N"]])
        else:
            w_arg = TensorDescriptor.from_tensor(weight, [cfg["BLOCK_N"], cfg["BLOCK_K"]])
    _linear_kernel[grid](
        x_arg,
        w_arg,
        out,
        part,
        locks,
        sq,
        res,
        norm_weight if norm_weight is not None else x,
        *fold_tensors,
        m,
        n,
        k,
        x.stride(0),
        weight.stride(0),
        weight.stride(1),
        out.stride(0),
        res.stride(0),
        eps,
        *fold_scalars,
        GATE_UP=gate_up,
        IN_KERNEL_REDUCE=in_kernel,
        PRECISION="ieee" if weight.dtype == torch.float32 else "tf32",
        TMA=tma,
        W_TRANSPOSED=w_transposed,
        **flags,
        **cfg,
    )
    if split > 1 and not in_kernel:
        block_n = min(1024, triton.next_power_of_2(n))
        _reduce_kernel[(triton.cdiv(n, block_n), m)](
            part,
            x,
            out,
            res,
            m,
            n,
            k,
            x.stride(0),
            out.stride(0),
            res.stride(0),
            eps,
            SPLIT_K=split,
            BLOCK_N=block_n,
            BLOCK_K=min(1024, triton.next_power_of_2(k)),
            num_warps=4,
            NORM=flags["NORM"],
            RESIDUAL=flags["RESIDUAL"],
            **pdl.launch_options(x.device),
        )
    if attention is not None and not fold:
        return _attend(out, attention)
    return attended


def _attend(qkv: torch.Tensor, attention: DecodeAttention) -> torch.Tensor:
    """The decode attention in a launch of its own."""
    return decode_attention_launch(qkv, *attention)


@torch.library.custom_op("csm_serve::fused_linear", mutates_args=())
def fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: torch.Tensor | None,
    residual: torch.Tensor | None,
    eps: float,
    gate_up: bool,
) -> torch.Tensor:
    """(M, N) = [residual +] epilogue(prologue(x) @ weight^T) for x (M, K), weight (N, K), any strides.

    prologue: RMSNorm with `norm_weight` and `eps` when given. With `gate_up`, weight is the fused
    (2N, K) gate/up projection (gate rows first) and the epilogue is silu(gate) * up. The output
    has x's dtype."""
    return launch(x, weight, norm_weight, residual, eps, gate_up)


@fused_linear.register_fake
def _(x, weight, norm_weight, residual, eps, gate_up):  # type: ignore[no-untyped-def]
    return x.new_empty(x.shape[0], weight.shape[0] // 2 if gate_up else weight.shape[0])


@torch.library.custom_op("csm_serve::fused_qkv_attention", mutates_args=("k_cache", "v_cache"))
def fused_qkv_attention(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
) -> torch.Tensor:
    """A decode step's attention output (M, n_heads * head_dim) from its layer input x (M, K):
    `decode_attention` of `fused_linear(x, weight, norm_weight)`, the QKV projection. Batches of up
    to `FOLD_ATTENTION_MAX_ROWS` rows attend inside the projection's launch, larger ones after it."""
    attention = DecodeAttention(positions, cos, sin, k_cache, v_cache, n_heads, n_kv_heads)
    return launch(x, weight, norm_weight, None, eps, False, attention)


@fused_qkv_attention.register_fake
def _(x, weight, norm_weight, eps, positions, cos, sin, k_cache, v_cache, n_heads, n_kv_heads):  # type: ignore[no-untyped-def]
    return x.new_empty(x.shape[0], n_heads * k_cache.shape[-1])


settle(globals())  # every key the same in every process (see `keys`)
