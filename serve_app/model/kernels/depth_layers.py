"""The depth decoder's layers in one persistent launch: a depth step at small batches.

At batch 1 a frame is 31 depth steps of about 22 kernels each, and the small projections are bound
by their launch and ramp, not by their bytes (README, *What bounds the misses*). Here one launch runs
every layer of a step. Its programs (one per SM) walk through the phases below, each spreading its
work items over all programs; between phases every program waits at a grid barrier (a counter in
global memory), so a phase may read what any program wrote in the phase before. Per layer:

1. `qkv`: split-K partial sums of (x * g) @ Wqkv^T. x, the layer's input, is formed as it is read
   (the step's input for the first layer, else h plus the last layer's summed down partials) and
   stored once for the phases after;
2. `attention`, per (row, kv head): the partial sums added and scaled by the row's 1 / rms, then
   RoPE, the cache write and attention over the row's prefix (`decode_attention.attend_one_token`);
3. `out`: split-K partial sums of o @ Wo^T;
4. `gate/up`: h = x + o Wo^T formed as it is read, its norm, silu(gate) * up (whole sums);
5. `down`: split-K partial sums of act @ W2^T;

and a last phase writes the output, h + the summed down partials (before the final norm, which
rides with the codebook head). Partial sums are added in a fixed order: deterministic. A program
that has counted itself in at a barrier asks L2 for the weights of its items of the next phase
before it waits (`PREFETCH`), so they stream in while the slowest programs finish.

The kernel also runs one phase per launch, without barriers (`MODE = "phases"`): Triton's
interpreter runs a grid's programs one after another, where a barrier would never open, so the CPU
tests check the phases that way, and the GPU tests check that both ways give the same bits.

Numerics follow the fused projections (`fused_linear`): fp32 sums; each projection's output, the
residual adds and the activation round to the activation dtype where the eager model rounds.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from serve_app.model.kernels import pdl
from serve_app.model.kernels.counters import device_counters
from serve_app.model.kernels.decode_attention import attend_one_token
from serve_app.model.kernels.pdl import enter

PHASES_PER_LAYER = 5
MAX_ROWS = 16
"""Rows a launch serves: one tensor-core row tile (the kernel is for small batches)."""

MODES = ("persistent", "phases")
MODE = "persistent"
"""`persistent`: one launch a step, grid barriers between phases (CUDA only); `phases`: one launch
per phase (Triton's interpreter always runs this way)."""

PREFETCH = True
"""In the persistent launch, each program asks L2 for the weights of its items of the next phase
between counting itself in at a barrier and waiting there (`_prefetch_l2`), so they stream in while
the slowest programs finish."""

NUM_WARPS = 4
"""Warps per program. Compiled for sm_90 at CSM-1B's widths, the kernel takes 255 registers at 4
warps and at 8 and spills 96-116 bytes (Triton 3.9) or 660 (3.6; 520-572 at 8 warps)
(`benchmarks/results/2026-12-04-cpu-kernels-sm90-triton-*.json`). Which is faster is for a GPU to say."""


@triton.jit
def _grid_arrive(sync_ptr):
    """Count this program in at the barrier (its stores of the phase released with it)."""
    tl.debug_barrier()  # every thread's stores of the phase are issued before the release
    tl.atomic_add(sync_ptr, 1, sem="release", scope="gpu")


@triton.jit
def _grid_wait(sync_ptr, target):
    """Wait until `target` programs have been counted in."""
    while tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu") < target:
        pass
    tl.debug_barrier()


@triton.jit
def _grid_exit(sync_ptr, programs):
    """The last program out zeroes the counters for the next launch: every other one has passed
    its last barrier when it counts itself out."""
    tl.debug_barrier()
    if tl.atomic_add(sync_ptr + 1, 1, sem="acq_rel", scope="gpu") == programs - 1:
        tl.atomic_xchg(sync_ptr, 0, sem="relaxed", scope="gpu")
        tl.atomic_xchg(sync_ptr + 1, 0, sem="relaxed", scope="gpu")


@triton.jit
def _stamp(times_ptr, index, pid):
    """Program 0 records the GPU's nanosecond clock (`%globaltimer`) at `index` (the phase timer)."""
    now = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
    if pid == 0:
        tl.store(times_ptr + index, now)


@triton.jit
def _prefetch_l2(w_ptr, row0, ROWS: tl.constexpr, col0, COLS: tl.constexpr, ROW_LEN: tl.constexpr):
    """Ask L2 for the (ROWS x COLS) block of a row-major bf16/fp32 matrix at (row0, col0), one
    request per 128-byte line: a hint with no result, which lets the weights of a program's next
    phase stream in while it waits at the barrier."""
    size: tl.constexpr = w_ptr.dtype.element_ty.primitive_bitwidth // 8
    PER_LINE: tl.constexpr = 128 // size
    LINES: tl.constexpr = (COLS + PER_LINE - 1) // PER_LINE
    rows = row0 + tl.arange(0, ROWS)
    cols = col0 + tl.arange(0, LINES) * PER_LINE
    lines = w_ptr + rows[:, None] * ROW_LEN + cols[None, :]
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [lines], dtype=tl.int32, is_pure=False, pack=1
    )


@triton.jit
def _prefetch_split(w_ptr, pid, programs, N: tl.constexpr, K: tl.constexpr, BN: tl.constexpr, SPLIT: tl.constexpr):
    """Prefetch this program's (column tile, K slice) blocks of a split-K phase's (N, K) weight, the
    items `_split_matmul` and `_qkv_phase` give it."""
    span: tl.constexpr = K // SPLIT
    for item in range(pid, (N // BN) * SPLIT, programs):
        _prefetch_l2(w_ptr, (item % (N // BN)) * BN, BN, (item // (N // BN)) * span, span, K)


@triton.jit
def _prefetch_phase(
    phase,
    wqkv_ptr,
    wo_ptr,
    w13_ptr,
    w2_ptr,
    pid,
    programs,
    L: tl.constexpr,
    D: tl.constexpr,
    NQKV: tl.constexpr,
    F: tl.constexpr,
    QD: tl.constexpr,
    BN_QKV: tl.constexpr,
    SPLIT_QKV: tl.constexpr,
    BN_O: tl.constexpr,
    SPLIT_O: tl.constexpr,
    BN_GU: tl.constexpr,
    BN_DOWN: tl.constexpr,
    SPLIT_DOWN: tl.constexpr,
):
    """Prefetch the weights of this program's items of `phase` (the split-K phases' items are
    (column tile, K slice) blocks, the gate/up phase's its gate and up rows)."""
    layer = phase // 5  # PHASES_PER_LAYER
    kind = phase % 5
    if layer < L:
        if kind == 0:
            _prefetch_split(wqkv_ptr + layer * NQKV * D, pid, programs, NQKV, D, BN_QKV, SPLIT_QKV)
        elif kind == 2:
            _prefetch_split(wo_ptr + layer * D * QD, pid, programs, D, QD, BN_O, SPLIT_O)
        elif kind == 3:
            w = w13_ptr + layer * 2 * F * D
            for item in range(pid, F // BN_GU, programs):
                _prefetch_l2(w, item * BN_GU, BN_GU, 0, D, D)
                _prefetch_l2(w, F + item * BN_GU, BN_GU, 0, D, D)
        elif kind == 4:
            _prefetch_split(w2_ptr + layer * D * F, pid, programs, D, F, BN_DOWN, SPLIT_DOWN)


@triton.jit
def _residual(base_ptr, part_ptr, rows, cols, row_ok, B, N: tl.constexpr, SPLIT: tl.constexpr):
    """base + (the SPLIT partial sums of a projection, added in order), for a (rows, cols) tile of
    (B, N) tensors, each rounded as the eager residual add rounds. Read through L2 (`.cg`): other
    SMs wrote them during this launch."""
    dtype = base_ptr.dtype.element_ty
    offs = rows[:, None] * N + cols[None, :]
    total = tl.zeros((rows.shape[0], cols.shape[0]), tl.float32)
    for s in tl.static_range(SPLIT):
        total += tl.load(part_ptr + s * B * N + offs, mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
    base = tl.load(base_ptr + offs, mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
    return (base.to(tl.float32) + total.to(dtype).to(tl.float32)).to(dtype)


@triton.jit
def _split_matmul(
    a_ptr,  # (B, K) activations
    w_ptr,  # (N, K) this layer's weight
    part_ptr,  # (SPLIT, B, N) fp32 partial sums
    B,
    pid,
    programs,
    N: tl.constexpr,
    K: tl.constexpr,
    BN: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The out and down phases: each item is one (column tile, K slice) of a @ W^T."""
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < B
    n_tiles: tl.constexpr = N // BN
    span: tl.constexpr = K // SPLIT
    for item in range(pid, n_tiles * SPLIT, programs):
        cols = (item % n_tiles) * BN + tl.arange(0, BN)
        start = (item // n_tiles) * span
        acc = tl.zeros((BLOCK_M, BN), tl.float32)
        for k0 in range(start, start + span, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(a_ptr + rows[:, None] * K + ks[None, :], mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
            acc += tl.dot(a, tl.load(w_ptr + cols[None, :] * K + ks[:, None]), input_precision=PRECISION)
        tl.store(part_ptr + (item // n_tiles) * B * N + rows[:, None] * N + cols[None, :], acc, mask=row_ok[:, None])


@triton.jit
def _qkv_phase(
    layer,
    x0_ptr,
    x0_stride,
    x_ptr,
    h_ptr,
    d_part_ptr,
    g_ptr,
    w_ptr,
    part_ptr,
    B,
    pid,
    programs,
    D: tl.constexpr,
    NQKV: tl.constexpr,
    BN: tl.constexpr,
    SPLIT: tl.constexpr,
    SPLIT_DOWN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Split-K partial sums of (x * g) @ Wqkv^T; the items of the first column tile store x."""
    dtype = x_ptr.dtype.element_ty
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < B
    n_tiles: tl.constexpr = NQKV // BN
    span: tl.constexpr = D // SPLIT
    for item in range(pid, n_tiles * SPLIT, programs):
        tile = item % n_tiles
        cols = tile * BN + tl.arange(0, BN)
        start = (item // n_tiles) * span
        acc = tl.zeros((BLOCK_M, BN), tl.float32)
        for k0 in range(start, start + span, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            if layer == 0:
                x = tl.load(x0_ptr + rows[:, None] * x0_stride + ks[None, :], mask=row_ok[:, None], other=0.0)
            else:
                x = _residual(h_ptr, d_part_ptr, rows, ks, row_ok, B, D, SPLIT_DOWN)
            if tile == 0:
                tl.store(x_ptr + rows[:, None] * D + ks[None, :], x, mask=row_ok[:, None])
            g = tl.load(g_ptr + ks).to(tl.float32)
            a = (x.to(tl.float32) * g[None, :]).to(dtype)
            acc += tl.dot(a, tl.load(w_ptr + cols[None, :] * D + ks[:, None]), input_precision=PRECISION)
        tl.store(part_ptr + (item // n_tiles) * B * NQKV + rows[:, None] * NQKV + cols[None, :], acc, mask=row_ok[:, None])


@triton.jit
def _head_sums(part_ptr, B, b, cols, mask, rstd, NQKV: tl.constexpr, SPLIT: tl.constexpr):
    """Row b's projection at `cols`: its partial sums added in order, scaled by 1 / rms, rounded
    to the activation dtype as the fused projection's output is; fp32."""
    total = tl.zeros(cols.shape, tl.float32)
    for s in tl.static_range(SPLIT):
        total += tl.load(part_ptr + s * B * NQKV + b * NQKV + cols, mask=mask, other=0.0, cache_modifier=".cg")
    return total * rstd


@triton.jit
def _attention_phase(
    x_ptr,
    part_ptr,
    pos_ptr,
    pos_stride,
    cos_ptr,
    sin_ptr,
    k_ptr,
    v_ptr,
    cache,  # offset of this layer's cache
    cache_s_stride,
    cache_h_stride,
    cache_p_stride,
    o_ptr,
    B,
    pid,
    programs,
    eps,
    scale,
    D: tl.constexpr,
    NQKV: tl.constexpr,
    SPLIT: tl.constexpr,
    H: tl.constexpr,
    HKV: tl.constexpr,
    GROUP: tl.constexpr,
    GP: tl.constexpr,
    DH: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Per (row, kv head): q, k, v from the partial sums, then the one-token attention."""
    dtype = x_ptr.dtype.element_ty
    half: tl.constexpr = DH // 2
    heads = tl.arange(0, GP)
    real = heads < GROUP
    dims = tl.arange(0, half)
    for item in range(pid, B * HKV, programs):
        b = item // HKV
        g = item % HKV
        sumsq = tl.zeros((BLOCK_K,), tl.float32)
        for k0 in range(0, D, BLOCK_K):
            xk = tl.load(x_ptr + b * D + k0 + tl.arange(0, BLOCK_K), cache_modifier=".cg").to(tl.float32)
            sumsq += xk * xk
        rstd = 1.0 / tl.sqrt(tl.sum(sumsq, axis=0) / D + eps)
        q_cols = (g * GROUP + heads)[:, None] * DH + dims[None, :]
        q_mask = real[:, None] & (dims[None, :] < half)
        q1 = _head_sums(part_ptr, B, b, q_cols, q_mask, rstd, NQKV, SPLIT).to(dtype).to(tl.float32)
        q2 = _head_sums(part_ptr, B, b, q_cols + half, q_mask, rstd, NQKV, SPLIT).to(dtype).to(tl.float32)
        k_cols = H * DH + g * DH + dims
        k1 = _head_sums(part_ptr, B, b, k_cols, dims < half, rstd, NQKV, SPLIT).to(dtype).to(tl.float32)
        k2 = _head_sums(part_ptr, B, b, k_cols + half, dims < half, rstd, NQKV, SPLIT).to(dtype).to(tl.float32)
        v_cols = (H + HKV) * DH + g * DH + dims
        v1 = _head_sums(part_ptr, B, b, v_cols, dims < half, rstd, NQKV, SPLIT).to(dtype)
        v2 = _head_sums(part_ptr, B, b, v_cols + half, dims < half, rstd, NQKV, SPLIT).to(dtype)
        raw_pos = tl.load(pos_ptr + b * pos_stride)
        o1, o2 = attend_one_token(
            q1, q2, k1, k2, v1, v2, raw_pos, cos_ptr, sin_ptr, k_ptr, v_ptr,
            cache + b * cache_s_stride + g * cache_h_stride, cache_p_stride, scale, GP, DH, BLOCK_N, PRECISION,
        )
        out = o_ptr + b * (H * DH) + (g * GROUP + heads)[:, None] * DH + dims[None, :]
        tl.store(out, o1.to(dtype), mask=real[:, None])
        tl.store(out + half, o2.to(dtype), mask=real[:, None])


@triton.jit
def _gate_up_phase(
    x_ptr,
    o_part_ptr,
    h_ptr,
    g_ptr,
    w_ptr,  # (2F, D), gate rows first
    act_ptr,
    B,
    pid,
    programs,
    eps,
    D: tl.constexpr,
    F: tl.constexpr,
    BN: tl.constexpr,
    SPLIT_O: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """silu(gate) * up of norm(h) for one column tile per item; h = x + o Wo^T, stored by item 0."""
    dtype = x_ptr.dtype.element_ty
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < B
    for item in range(pid, F // BN, programs):
        cols = item * BN + tl.arange(0, BN)
        acc = tl.zeros((BLOCK_M, BN), tl.float32)
        acc_up = tl.zeros((BLOCK_M, BN), tl.float32)
        sumsq = tl.zeros((BLOCK_M,), tl.float32)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            h = _residual(x_ptr, o_part_ptr, rows, ks, row_ok, B, D, SPLIT_O)
            if item == 0:
                tl.store(h_ptr + rows[:, None] * D + ks[None, :], h, mask=row_ok[:, None])
            hf = h.to(tl.float32)
            sumsq += tl.sum(hf * hf, axis=1)
            g = tl.load(g_ptr + ks).to(tl.float32)
            a = (hf * g[None, :]).to(dtype)
            acc += tl.dot(a, tl.load(w_ptr + cols[None, :] * D + ks[:, None]), input_precision=PRECISION)
            acc_up += tl.dot(a, tl.load(w_ptr + (F + cols)[None, :] * D + ks[:, None]), input_precision=PRECISION)
        rstd = 1.0 / tl.sqrt(sumsq / D + eps)
        gate = (acc * rstd[:, None]).to(dtype).to(tl.float32)
        act = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32)
        out = (act * (acc_up * rstd[:, None]).to(dtype).to(tl.float32)).to(dtype)
        tl.store(act_ptr + rows[:, None] * F + cols[None, :], out, mask=row_ok[:, None])


@triton.jit
def _output_phase(
    h_ptr, d_part_ptr, out_ptr, B, pid, programs, D: tl.constexpr, SPLIT_DOWN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The last layer's output: h + its summed down partials."""
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < B
    for item in range(pid, D // BLOCK_K, programs):
        ks = item * BLOCK_K + tl.arange(0, BLOCK_K)
        out = _residual(h_ptr, d_part_ptr, rows, ks, row_ok, B, D, SPLIT_DOWN)
        tl.store(out_ptr + rows[:, None] * D + ks[None, :], out, mask=row_ok[:, None])


@triton.jit
def _depth_layers_kernel(
    x0_ptr,  # (B, D) the first layer's input, row stride x0_stride
    out_ptr,  # (B, D) the last layer's output, before the final norm
    pos_ptr,  # (B,) int64 positions, stride pos_stride (< 0: an idle row)
    attn_norm_ptr,  # (L, D)
    wqkv_ptr,  # (L, NQKV, D)
    wo_ptr,  # (L, D, H * DH)
    ffn_norm_ptr,  # (L, D)
    w13_ptr,  # (L, 2F, D)
    w2_ptr,  # (L, D, F)
    cos_ptr,  # (P, DH) fp32
    sin_ptr,
    k_ptr,  # (L, S, HKV, P + 1, DH)
    v_ptr,
    x_ptr,  # scratch (B, D): the layer's input
    h_ptr,  # scratch (B, D): after its attention
    qkv_part_ptr,  # scratch (SPLIT_QKV, B, NQKV) fp32
    o_ptr,  # scratch (B, H * DH)
    o_part_ptr,  # scratch (SPLIT_O, B, D) fp32
    act_ptr,  # scratch (B, F)
    d_part_ptr,  # scratch (SPLIT_DOWN, B, D) fp32
    sync_ptr,  # (2,) int32: barrier arrivals, exits; zero between launches
    times_ptr,  # (phases + 1,) int64 (TIMED): the clock at the start and as each phase's barrier opens
    B,
    first_phase,
    last_phase,
    x0_stride,
    pos_stride,
    cache_l_stride,
    cache_s_stride,
    cache_h_stride,
    cache_p_stride,
    eps,
    scale,
    L: tl.constexpr,
    D: tl.constexpr,
    NQKV: tl.constexpr,
    F: tl.constexpr,
    H: tl.constexpr,
    HKV: tl.constexpr,
    GROUP: tl.constexpr,
    GP: tl.constexpr,
    DH: tl.constexpr,
    BN_QKV: tl.constexpr,
    SPLIT_QKV: tl.constexpr,
    BN_O: tl.constexpr,
    SPLIT_O: tl.constexpr,
    BN_GU: tl.constexpr,
    BN_DOWN: tl.constexpr,
    SPLIT_DOWN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GRID_SYNC: tl.constexpr,
    PREFETCH: tl.constexpr,
    TIMED: tl.constexpr,
    PRECISION: tl.constexpr,
    PDL_WAIT: tl.constexpr,
    PDL_EARLY: tl.constexpr,
):
    enter(PDL_WAIT, PDL_EARLY)
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    if TIMED:
        _stamp(times_ptr, 0, pid)
    QD: tl.constexpr = H * DH
    for phase in range(first_phase, last_phase):
        layer = phase // 5  # PHASES_PER_LAYER
        kind = phase % 5
        if kind == 0:
            if layer < L:
                _qkv_phase(
                    layer, x0_ptr, x0_stride, x_ptr, h_ptr, d_part_ptr, attn_norm_ptr + layer * D,
                    wqkv_ptr + layer * NQKV * D, qkv_part_ptr, B, pid, programs,
                    D, NQKV, BN_QKV, SPLIT_QKV, SPLIT_DOWN, BLOCK_M, BLOCK_K, PRECISION,
                )
            else:
                _output_phase(h_ptr, d_part_ptr, out_ptr, B, pid, programs, D, SPLIT_DOWN, BLOCK_M, BLOCK_K)
        elif kind == 1:
            _attention_phase(
                x_ptr, qkv_part_ptr, pos_ptr, pos_stride, cos_ptr, sin_ptr, k_ptr, v_ptr,
                layer * cache_l_stride, cache_s_stride, cache_h_stride, cache_p_stride, o_ptr, B, pid,
                programs, eps, scale, D, NQKV, SPLIT_QKV, H, HKV, GROUP, GP, DH, BLOCK_K, BLOCK_N, PRECISION,
            )
        elif kind == 2:
            _split_matmul(
                o_ptr, wo_ptr + layer * D * QD, o_part_ptr, B, pid, programs,
                D, QD, BN_O, SPLIT_O, BLOCK_M, BLOCK_K, PRECISION,
            )
        elif kind == 3:
            _gate_up_phase(
                x_ptr, o_part_ptr, h_ptr, ffn_norm_ptr + layer * D, w13_ptr + layer * 2 * F * D, act_ptr,
                B, pid, programs, eps, D, F, BN_GU, SPLIT_O, BLOCK_M, BLOCK_K, PRECISION,
            )
        else:
            _split_matmul(
                act_ptr, w2_ptr + layer * D * F, d_part_ptr, B, pid, programs,
                D, F, BN_DOWN, SPLIT_DOWN, BLOCK_M, BLOCK_K, PRECISION,
            )
        if GRID_SYNC:  # noqa: SIM102 - a constexpr test alone: no barrier is compiled without it
            if phase + 1 < last_phase:
                _grid_arrive(sync_ptr)
                if PREFETCH:
                    _prefetch_phase(
                        phase + 1, wqkv_ptr, wo_ptr, w13_ptr, w2_ptr, pid, programs, L, D, NQKV, F, QD,
                        BN_QKV, SPLIT_QKV, BN_O, SPLIT_O, BN_GU, BN_DOWN, SPLIT_DOWN,
                    )
                _grid_wait(sync_ptr, (phase + 1 - first_phase) * programs)
        if TIMED:  # after the barrier (the last phase: after program 0's own part)
            _stamp(times_ptr, phase + 1 - first_phase, pid)
    if GRID_SYNC:
        _grid_exit(sync_ptr, programs)


def _fit(width: int, size: int) -> int:
    """The largest power of two <= `size` that divides `width` (below 16 where none does)."""
    while size >= 16 and width % size:
        size //= 2
    return size


def _split(k: int, block_k: int, most: int) -> int:
    """The largest power-of-two split <= `most` whose slices are whole K tiles."""
    split = most
    while split > 1 and k % (split * block_k):
        split //= 2
    return split


def tiles(dim: int, q_dim: int, qkv_dim: int, ffn_dim: int) -> dict[str, int]:
    """The kernel's tiles and splits for a stack's widths (`fits` says whether they divide them).

    Column tiles of 32 (64 for the wide gate/up and down outputs) and K splits so that each phase
    has about as many items as an H100/H200 has SMs at CSM-1B's depth decoder (qkv 384, out 128,
    gate/up 128, down 128)."""
    block_k = 128
    while block_k >= 16 and (dim % block_k or q_dim % block_k or ffn_dim % block_k):
        block_k //= 2
    return {
        "BLOCK_K": block_k,
        "BN_QKV": _fit(qkv_dim, 32),
        "BN_O": _fit(dim, 32),
        "BN_GU": _fit(ffn_dim, 64),
        "BN_DOWN": _fit(dim, 64),
        "SPLIT_QKV": _split(dim, block_k, 8),
        "SPLIT_O": _split(q_dim, block_k, 4),
        "SPLIT_DOWN": _split(ffn_dim, block_k, 8),
    }


PLAN_OVERRIDES: dict[str, int] = {}
"""Tiles and splits that replace `tiles`' (benchmark sweeps); `launch` checks that they fit."""


def fits(plan: dict[str, int], dim: int, q_dim: int, qkv_dim: int, ffn_dim: int) -> bool:
    """Whether every tile is a power of two >= 16 and every width divides into whole tiles and splits."""
    k = plan["BLOCK_K"]
    tiles_ok = all(
        plan[name] >= 16 and plan[name] & (plan[name] - 1) == 0
        for name in ("BLOCK_K", "BN_QKV", "BN_O", "BN_GU", "BN_DOWN")
    )
    return (
        tiles_ok
        and all(plan[name] >= 1 for name in ("SPLIT_QKV", "SPLIT_O", "SPLIT_DOWN"))
        and qkv_dim % plan["BN_QKV"] == 0
        and dim % plan["BN_O"] == 0
        and ffn_dim % plan["BN_GU"] == 0
        and dim % plan["BN_DOWN"] == 0
        and dim % (plan["SPLIT_QKV"] * k) == 0
        and q_dim % (plan["SPLIT_O"] * k) == 0
        and ffn_dim % (plan["SPLIT_DOWN"] * k) == 0
    )


def supports(dim: int, n_heads: int, n_kv_heads: int, head_dim: int, ffn_dim: int) -> bool:
    """Whether the kernel runs a stack of these widths (heads as the fused attention needs them)."""
    q_dim, qkv_dim = n_heads * head_dim, (n_heads + 2 * n_kv_heads) * head_dim
    return (
        head_dim >= 32
        and head_dim & (head_dim - 1) == 0
        and n_heads % n_kv_heads == 0
        and fits(tiles(dim, q_dim, qkv_dim, ffn_dim), dim, q_dim, qkv_dim, ffn_dim)
    )


def phase_names(n_layers: int) -> list[str]:
    """The kernel's phases in order, e.g. `layer0.qkv`, ..., `output` (the phase timer's labels)."""
    kinds = ("qkv", "attention", "out", "gate_up", "down")
    return [f"layer{layer}.{kind}" for layer in range(n_layers) for kind in kinds] + ["output"]


def barrier_counters(device: torch.device) -> torch.Tensor:
    """The device's grid-barrier counters (made before any CUDA-graph capture that uses them)."""
    return device_counters("depth-layers barrier", device, 2)


def launch(
    x: torch.Tensor,
    positions: torch.Tensor,
    attention_norm: torch.Tensor,
    wqkv: torch.Tensor,
    wo: torch.Tensor,
    ffn_norm: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_stack: torch.Tensor,
    v_stack: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    eps: float,
    programs: int | None = None,
    plan: dict[str, int] | None = None,
    times: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the kernel (see `depth_layers`); `programs`: the grid (default: one per SM); `plan`:
    tiles and splits other than `tiles`' (tests). `times` (phases + 1 int64, a persistent launch
    only): the GPU clock in ns at its start and as each phase's barrier opens, for a per-phase
    profile (`phase_names` labels them)."""
    b, dim = x.shape
    n_layers, n_qkv, _ = wqkv.shape
    head_dim, ffn_dim = k_stack.shape[-1], w2.shape[-1]
    q_dim = n_heads * head_dim
    if not supports(dim, n_heads, n_kv_heads, head_dim, ffn_dim):
        raise ValueError(f"the depth-layers kernel does not fit widths {dim}, {q_dim}, {n_qkv}, {ffn_dim}")
    plan = plan or {**tiles(dim, q_dim, n_qkv, ffn_dim), **PLAN_OVERRIDES}
    if not fits(plan, dim, q_dim, n_qkv, ffn_dim):
        raise ValueError(f"tiles {plan} do not fit widths {dim}, {q_dim}, {n_qkv}, {ffn_dim}")
    if b > MAX_ROWS:
        raise ValueError(f"the depth-layers kernel serves up to {MAX_ROWS} rows, got {b}")
    if b > k_stack.shape[1]:
        raise ValueError(f"{b} rows for caches of {k_stack.shape[1]} slots (row b is slot b)")
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if b == 0:
        return out
    scratch = (  # x, h, the QKV partial sums, o, its partial sums, act, the down partial sums
        x.new_empty(b, dim),
        x.new_empty(b, dim),
        x.new_empty(plan["SPLIT_QKV"], b, n_qkv, dtype=torch.float32),
        x.new_empty(b, q_dim),
        x.new_empty(plan["SPLIT_O"], b, dim, dtype=torch.float32),
        x.new_empty(b, ffn_dim),
        x.new_empty(plan["SPLIT_DOWN"], b, dim, dtype=torch.float32),
    )
    if MODE not in MODES:
        raise ValueError(f"depth-layers mode {MODE!r} is not one of {MODES}")
    persistent = MODE == "persistent" and x.device.type == "cuda"
    if programs is None:
        programs = torch.cuda.get_device_properties(x.device).multi_processor_count if x.device.type == "cuda" else 4
    sync = barrier_counters(x.device)
    if times is not None and not persistent:
        raise ValueError("the phase timer times a persistent launch (CUDA, MODE 'persistent')")
    phases = PHASES_PER_LAYER * n_layers + 1
    if times is not None and (times.dtype != torch.int64 or times.numel() < phases + 1):
        raise ValueError(f"the phase timer needs {phases + 1} int64 slots")
    group = n_heads // n_kv_heads
    spans = [(0, phases)] if persistent else [(p, p + 1) for p in range(phases)]
    for first, last in spans:
        _depth_layers_kernel[(programs,)](
            x, out, positions, attention_norm, wqkv, wo, ffn_norm, w13, w2, cos, sin, k_stack, v_stack,
            *scratch, sync, times if times is not None else sync, b, first, last, x.stride(0), positions.stride(0),
            k_stack.stride(0), k_stack.stride(1), k_stack.stride(2), k_stack.stride(3),
            eps, 1.0 / math.sqrt(head_dim),
            L=n_layers, D=dim, NQKV=n_qkv, F=ffn_dim, H=n_heads, HKV=n_kv_heads, GROUP=group,
            GP=max(16, triton.next_power_of_2(group)), DH=head_dim, BLOCK_M=MAX_ROWS,
            BLOCK_N=32 if head_dim > 64 else 64, GRID_SYNC=persistent, PREFETCH=persistent and PREFETCH, TIMED=times is not None,
            PRECISION="ieee" if wqkv.dtype == torch.float32 else "tf32",
            num_warps=NUM_WARPS, num_stages=3, **plan, **pdl.launch_options(x.device),
        )
    return out


@torch.library.custom_op("csm_serve::depth_layers", mutates_args=("k_stack", "v_stack"))
def depth_layers(
    x: torch.Tensor,
    positions: torch.Tensor,
    attention_norm: torch.Tensor,
    wqkv: torch.Tensor,
    wo: torch.Tensor,
    ffn_norm: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_stack: torch.Tensor,
    v_stack: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    eps: float,
) -> torch.Tensor:
    """Every layer of a stack for one new token per row b (= cache slot b): (B, D) → (B, D), before
    the final norm. The weights are the stack's (`Transformer.stacked_weights`), k_stack/v_stack its
    caches (layers, slots, kv heads, positions + 1, head dim), which get each layer's new key/value
    at [layer, b, :, position]; positions (B,) long (< 0: an idle row, which writes nothing)."""
    return launch(
        x, positions, attention_norm, wqkv, wo, ffn_norm, w13, w2, cos, sin, k_stack, v_stack,
        n_heads, n_kv_heads, eps,
    )


@depth_layers.register_fake
def _(x, positions, attention_norm, wqkv, wo, ffn_norm, w13, w2, cos, sin, k_stack, v_stack, n_heads, n_kv_heads, eps):  # type: ignore[no-untyped-def]
    return torch.empty_like(x, memory_format=torch.contiguous_format)
