"""The depth decoder's layers in one persistent launch: a depth step in one kernel, not twenty.

A frame is 31 depth steps of about 22 kernels each. At batch 1 the small projections are bound by
their launch and ramp, not by their bytes (README, *What bounds the misses*); at 128 rows each kernel
still pays its ramp and tail (the 2-3 MB projections take 4-7 us for about 1 us of bytes,
`benchmarks/results/2026-12-03-1415-nvidia-h200-fused-linear-tma.json`). Here one launch runs every
layer of a step. Its programs (one per SM) walk through the phases below, each spreading its work
items (row tile x column tile x K slice) over all programs; between phases every program waits at a
grid barrier (a counter in global memory), so a phase may read what any program wrote in the phase
before. Per layer:

1. `qkv`: split-K partial sums of (x * g) @ Wqkv^T, x the layer's input;
2. `attention`, per (row, kv head): the partial sums added and scaled by the row's 1 / rms, then
   RoPE, the cache write and attention over the row's prefix (`decode_attention.attend_one_token`);
3. `out`: h = x + o Wo^T;
4. `gate/up`: silu(gate) * up of norm(h) (whole sums);
5. `down`: h + act W2^T, the next layer's input (the last layer's: the output, before the final
   norm, which rides with the codebook head).

The out and down projections split K too: each item stores its slice's partial sums, and the last
slice of a tile to finish (counted at the tile's lock) adds them in a fixed order (deterministic)
and writes the residual stream, so the phases after read it once formed. A program that has
counted itself in at a barrier asks L2 for the weights of its items of the next phase before it
waits (`PREFETCH`), so they stream in while the slowest programs finish.

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
MAX_ROWS = 256
"""Rows a launch serves (at most the caches' slots: row b is slot b)."""

M_TILE = 64
"""Rows of a work item's tile at most (a power of two >= 16): a launch of more rows splits each
phase's items into row tiles too, the tiles of one weight block on neighbouring programs, so the
block is read from memory once and from L2 for the others."""

MODES = ("persistent", "phases")
MODE = "persistent"
"""`persistent`: one launch a step, grid barriers between phases (CUDA only); `phases`: one launch
per phase (Triton's interpreter always runs this way)."""

PREFETCH = True
"""In the persistent launch, each program asks L2 for the weights of its items of the next phase
between counting itself in at a barrier and waiting there (`_prefetch_l2`), so they stream in while
the slowest programs finish."""

ROW_TILE_PLANS: dict[int, tuple[int, int, int]] = {16: (64, 32, 4), 32: (64, 32, 8), 64: (32, 32, 8), 128: (32, 32, 8)}
"""Rows per tile → (largest K tile, largest gate/up column tile, warps). Compiled for sm_90 at CSM-1B's
widths, the persistent launch spills nothing with these under Triton 3.6 and 3.9, where wider tiles
spilled tens of bytes (tiles of 16 rows) to kilobytes (64) (`python tests/support_kernel_compile.py
--depth-tiles`: `benchmarks/results/2026-12-05-cpu-depth-kernel-row-tiles-sm90-triton-*.json`; 128:
12 bytes, untabled). Which is fastest is for a GPU to say (`bench_fused_linear.py`'s depth variants)."""

NUM_WARPS: int | None = None
"""Warps per program instead of the row tile's own (`ROW_TILE_PLANS`; benchmark sweeps)."""


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
def _prefetch_split(
    w_ptr, pid, programs, m_tiles, N: tl.constexpr, K: tl.constexpr, BN: tl.constexpr, SPLIT: tl.constexpr
):
    """Prefetch the (column tile, K slice) blocks of a split-K phase's (N, K) weight that this
    program's items (`_split_item`) of `_split_matmul` or `_qkv_phase` read: a block once, by the
    item of its first row tile."""
    span: tl.constexpr = K // SPLIT
    for item in range(pid, m_tiles * (N // BN) * SPLIT, programs):
        if item % m_tiles == 0:
            rest = item // m_tiles
            _prefetch_l2(w_ptr, (rest % (N // BN)) * BN, BN, (rest // (N // BN)) * span, span, K)


@triton.jit
def _prefetch_phase(
    phase,
    wqkv_ptr,
    wo_ptr,
    w13_ptr,
    w2_ptr,
    pid,
    programs,
    m_tiles,
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
    if kind == 0:
        _prefetch_split(wqkv_ptr + layer * NQKV * D, pid, programs, m_tiles, NQKV, D, BN_QKV, SPLIT_QKV)
    elif kind == 2:
        _prefetch_split(wo_ptr + layer * D * QD, pid, programs, m_tiles, D, QD, BN_O, SPLIT_O)
    elif kind == 3:
        w = w13_ptr + layer * 2 * F * D
        for item in range(pid, m_tiles * (F // BN_GU), programs):
            if item % m_tiles == 0:  # a block once, by the item of its first row tile
                tile = item // m_tiles
                _prefetch_l2(w, tile * BN_GU, BN_GU, 0, D, D)
                _prefetch_l2(w, F + tile * BN_GU, BN_GU, 0, D, D)
    elif kind == 4:
        _prefetch_split(w2_ptr + layer * D * F, pid, programs, m_tiles, D, F, BN_DOWN, SPLIT_DOWN)


@triton.jit
def _split_item(item, m_tiles, B, n_tiles: tl.constexpr, BLOCK_M: tl.constexpr):
    """A work item's row tile (its rows and which are real), column tile and K slice. Row tiles
    vary fastest, so the programs that share a weight block run side by side."""
    rows = (item % m_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    rest = item // m_tiles
    return rows, rows < B, rest % n_tiles, rest // n_tiles


@triton.jit
def _round_add(base, total, dtype: tl.constexpr):
    """base + a projection's fp32 sums, each rounded as the eager residual add rounds."""
    return (base.to(tl.float32) + total.to(dtype).to(tl.float32)).to(dtype)


@triton.jit
def _finish_tile(
    acc, part_ptr, lock_ptr, base_ptr, dst_ptr, rows, cols, row_ok, split, B, N: tl.constexpr, SPLIT: tl.constexpr
):
    """An item's sums of a (row tile, column tile) of the output projection or down projection:
    dst = base + the tile's sums (the residual stream). With K split, each item stores its slice's
    partial sums and counts itself in at the tile's lock; the tile's last slice adds them all in a
    fixed order (deterministic, unlike atomic adds) and writes dst. So the next phases read the
    residual stream once formed, not every partial sum again in each of their items. Partial sums
    and base are read through L2 (`.cg`): other SMs wrote them during this launch."""
    dtype = base_ptr.dtype.element_ty
    offs = rows[:, None] * N + cols[None, :]
    if SPLIT == 1:
        base = tl.load(base_ptr + offs, mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
        tl.store(dst_ptr + offs, _round_add(base, acc, dtype), mask=row_ok[:, None])
    else:
        tl.store(part_ptr + split * B * N + offs, acc, mask=row_ok[:, None])
        tl.debug_barrier()  # every thread's stores are issued before the release below
        if tl.atomic_add(lock_ptr, 1, sem="acq_rel", scope="gpu") == SPLIT - 1:
            total = tl.zeros((rows.shape[0], cols.shape[0]), tl.float32)
            for s in range(SPLIT):  # a loop, not unrolled: one partial tile live at a time
                total += tl.load(part_ptr + s * B * N + offs, mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
            base = tl.load(base_ptr + offs, mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
            tl.store(dst_ptr + offs, _round_add(base, total, dtype), mask=row_ok[:, None])
            tl.store(lock_ptr, 0)  # zero again for the next phase (a barrier away) or launch


@triton.jit
def _split_matmul(
    a_ptr,  # (B, K) activations
    w_ptr,  # (N, K) this layer's weight
    part_ptr,  # (SPLIT, B, N) fp32 partial sums
    lock_ptr,  # (row tiles x N / BN) int32 tile counters, zero
    base_ptr,  # (B, N) the residual stream before
    dst_ptr,  # (B, N) the residual stream after
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
    """The out and down phases, dst = base + a @ W^T: each item is one (row tile, column tile,
    K slice)."""
    m_tiles = tl.cdiv(B, BLOCK_M)
    n_tiles: tl.constexpr = N // BN
    span: tl.constexpr = K // SPLIT
    for item in range(pid, m_tiles * n_tiles * SPLIT, programs):
        rows, row_ok, tile, split = _split_item(item, m_tiles, B, n_tiles, BLOCK_M)
        cols = tile * BN + tl.arange(0, BN)
        start = split * span
        acc = tl.zeros((BLOCK_M, BN), tl.float32)
        for k0 in range(start, start + span, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(a_ptr + rows[:, None] * K + ks[None, :], mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
            acc += tl.dot(a, tl.load(w_ptr + cols[None, :] * K + ks[:, None]), input_precision=PRECISION)
        lock = lock_ptr + (item % m_tiles) * n_tiles + tile
        _finish_tile(acc, part_ptr, lock, base_ptr, dst_ptr, rows, cols, row_ok, split, B, N, SPLIT)


@triton.jit
def _qkv_phase(
    layer,
    x0_ptr,
    x0_stride,
    x_ptr,
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
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Split-K partial sums of (x * g) @ Wqkv^T. x: the step's input for the first layer (which the
    items of the first column tile store for the phases after), else what the down phase wrote."""
    dtype = x_ptr.dtype.element_ty
    m_tiles = tl.cdiv(B, BLOCK_M)
    n_tiles: tl.constexpr = NQKV // BN
    span: tl.constexpr = D // SPLIT
    for item in range(pid, m_tiles * n_tiles * SPLIT, programs):
        rows, row_ok, tile, split = _split_item(item, m_tiles, B, n_tiles, BLOCK_M)
        cols = tile * BN + tl.arange(0, BN)
        start = split * span
        acc = tl.zeros((BLOCK_M, BN), tl.float32)
        for k0 in range(start, start + span, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            if layer == 0:
                x = tl.load(x0_ptr + rows[:, None] * x0_stride + ks[None, :], mask=row_ok[:, None], other=0.0)
                if tile == 0:
                    tl.store(x_ptr + rows[:, None] * D + ks[None, :], x, mask=row_ok[:, None])
            else:
                x = tl.load(x_ptr + rows[:, None] * D + ks[None, :], mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
            g = tl.load(g_ptr + ks).to(tl.float32)
            a = (x.to(tl.float32) * g[None, :]).to(dtype)
            acc += tl.dot(a, tl.load(w_ptr + cols[None, :] * D + ks[:, None]), input_precision=PRECISION)
        tl.store(part_ptr + split * B * NQKV + rows[:, None] * NQKV + cols[None, :], acc, mask=row_ok[:, None])


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
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """silu(gate) * up of norm(h) for one (row tile, column tile) per item (h = x + o Wo^T, which
    the out phase wrote)."""
    dtype = h_ptr.dtype.element_ty
    m_tiles = tl.cdiv(B, BLOCK_M)
    for item in range(pid, m_tiles * (F // BN), programs):
        rows, row_ok, tile, _ = _split_item(item, m_tiles, B, F // BN, BLOCK_M)
        cols = tile * BN + tl.arange(0, BN)
        acc = tl.zeros((BLOCK_M, BN), tl.float32)
        acc_up = tl.zeros((BLOCK_M, BN), tl.float32)
        sumsq = tl.zeros((BLOCK_M,), tl.float32)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            h = tl.load(h_ptr + rows[:, None] * D + ks[None, :], mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
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
    sync_ptr,  # (2 + tiles,) int32: barrier arrivals, exits, then the split-K tiles' locks; zero between launches
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
            _qkv_phase(
                layer, x0_ptr, x0_stride, x_ptr, attn_norm_ptr + layer * D, wqkv_ptr + layer * NQKV * D,
                qkv_part_ptr, B, pid, programs, D, NQKV, BN_QKV, SPLIT_QKV, BLOCK_M, BLOCK_K, PRECISION,
            )
        elif kind == 1:
            _attention_phase(
                x_ptr, qkv_part_ptr, pos_ptr, pos_stride, cos_ptr, sin_ptr, k_ptr, v_ptr,
                layer * cache_l_stride, cache_s_stride, cache_h_stride, cache_p_stride, o_ptr, B, pid,
                programs, eps, scale, D, NQKV, SPLIT_QKV, H, HKV, GROUP, GP, DH, BLOCK_K, BLOCK_N, PRECISION,
            )
        elif kind == 2:
            _split_matmul(  # h = x + o Wo^T
                o_ptr, wo_ptr + layer * D * QD, o_part_ptr, sync_ptr + 2, x_ptr, h_ptr, B, pid, programs,
                D, QD, BN_O, SPLIT_O, BLOCK_M, BLOCK_K, PRECISION,
            )
        elif kind == 3:
            _gate_up_phase(
                h_ptr, ffn_norm_ptr + layer * D, w13_ptr + layer * 2 * F * D, act_ptr,
                B, pid, programs, eps, D, F, BN_GU, BLOCK_M, BLOCK_K, PRECISION,
            )
        else:  # the next layer's input, or the last layer's output: h + act W2^T
            dst = out_ptr if layer == L - 1 else x_ptr
            _split_matmul(
                act_ptr, w2_ptr + layer * D * F, d_part_ptr, sync_ptr + 2, h_ptr, dst, B, pid, programs,
                D, F, BN_DOWN, SPLIT_DOWN, BLOCK_M, BLOCK_K, PRECISION,
            )
        if GRID_SYNC:  # noqa: SIM102 - a constexpr test alone: no barrier is compiled without it
            if phase + 1 < last_phase:
                _grid_arrive(sync_ptr)
                if PREFETCH:
                    _prefetch_phase(
                        phase + 1, wqkv_ptr, wo_ptr, w13_ptr, w2_ptr, pid, programs, tl.cdiv(B, BLOCK_M),
                        D, NQKV, F, QD,
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


def tiles(dim: int, q_dim: int, qkv_dim: int, ffn_dim: int, rows: int = 1) -> dict[str, int]:
    """The kernel's tiles and splits for a stack's widths and a launch's rows (`fits` says whether
    they divide the widths).

    K and gate/up column tiles as large as the row tile allows (`ROW_TILE_PLANS`), column tiles of 32
    for the other outputs (64 for down), and K splits so that each phase has about as many items as
    an H100/H200 has SMs at CSM-1B's depth decoder in one row tile (qkv 384, out 128, gate/up 256,
    down 128); more row tiles take fewer splits, down to one."""
    block_m = row_tile(rows)
    m_tiles = -(-rows // block_m)
    largest_k, largest_gate_up, _ = ROW_TILE_PLANS[block_m]
    block_k = largest_k
    while block_k >= 16 and (dim % block_k or q_dim % block_k or ffn_dim % block_k):
        block_k //= 2
    return {
        "BLOCK_K": block_k,
        "BN_QKV": _fit(qkv_dim, 32),
        "BN_O": _fit(dim, 32),
        "BN_GU": _fit(ffn_dim, largest_gate_up),
        "BN_DOWN": _fit(dim, 64),
        "SPLIT_QKV": _split(dim, block_k, max(1, 8 // m_tiles)),
        "SPLIT_O": _split(q_dim, block_k, max(1, 4 // m_tiles)),
        "SPLIT_DOWN": _split(ffn_dim, block_k, max(1, 8 // m_tiles)),
    }


def row_tile(rows: int) -> int:
    """A launch's rows per tile: the next power of two (16 at least: the tensor cores' smallest),
    up to `M_TILE`."""
    if M_TILE not in ROW_TILE_PLANS:
        raise ValueError(f"M_TILE must be one of {sorted(ROW_TILE_PLANS)}, got {M_TILE}")
    return min(max(16, triton.next_power_of_2(rows)), M_TILE)


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
    """The kernel's phases in order, `layer0.qkv` ... `layer{n-1}.down` (the phase timer's labels)."""
    kinds = ("qkv", "attention", "out", "gate_up", "down")
    return [f"layer{layer}.{kind}" for layer in range(n_layers) for kind in kinds]


TILE_LOCKS = 4096
"""Split-K tile counters of the out and down phases (row tiles x column tiles, 64 at most at CSM-1B's
widths in one row tile)."""


def barrier_counters(device: torch.device) -> torch.Tensor:
    """The device's grid-barrier counters, then the split-K tiles' (made before any CUDA-graph
    capture that uses them)."""
    return device_counters("depth-layers barrier", device, 2 + TILE_LOCKS)


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
    block_m = row_tile(b)
    plan = plan or {**tiles(dim, q_dim, n_qkv, ffn_dim, b), **PLAN_OVERRIDES}
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
    phases = PHASES_PER_LAYER * n_layers
    tile_locks = -(-b // block_m) * dim // min(plan["BN_O"], plan["BN_DOWN"])
    if tile_locks > TILE_LOCKS:
        raise ValueError(f"{tile_locks} split-K tiles for {TILE_LOCKS} tile counters")
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
            GP=max(16, triton.next_power_of_2(group)), DH=head_dim, BLOCK_M=block_m,
            BLOCK_N=32 if head_dim > 64 else 64, GRID_SYNC=persistent, PREFETCH=persistent and PREFETCH, TIMED=times is not None,
            PRECISION="ieee" if wqkv.dtype == torch.float32 else "tf32",
            num_warps=NUM_WARPS or ROW_TILE_PLANS[block_m][2], num_stages=3, **plan, **pdl.launch_options(x.device),
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
