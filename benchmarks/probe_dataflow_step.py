"""Probe: a frame's depth-decoder projections as one dataflow launch, against a launch each.

Not the model, and nothing in the service uses it: it measures the lever the batch-1 target needs
before the engine is built around it. At batch 1 a frame is 31 depth-decoder steps, each 17
projections (per layer QKV, attention output, gate/up, down; the codebook head) that each need the
whole row of the one before, so the step is a chain of small launches: every boundary drains the
GPU and fills it again, and the small projections (2-4 MB) never reach the bandwidth the large
ones do. A persistent kernel with grid barriers between the phases lost on bandwidth (one program
per SM streams too little at a time; docs/performance.md).

Here every (phase, column tile) of the whole frame is one program of one launch. A program takes a
ticket (so every program with a smaller ticket has started: the lowest unfinished ticket never
waits on anything unstarted, so the launch cannot deadlock however many programs it has), loads its
first weight tile (no phase writes weights), then waits on the counter of the phase whose output it
reads, reads that output, finishes its dot products, stores its columns and counts itself in. The
phases run as a pipeline: while one phase computes, the programs of the phases after it are already
placed with their first weights in flight.

Arms, timed as CUDA graphs replayed with the weights streamed from HBM (226.5 MB a step):
- `dataflow`: the frame in one launch;
- `persistent` (variants with `-resN`): N resident programs an SM take the tiles in turn, in a loop
  Triton may software-pipeline (`-stN`), the weights by pointer loads or bulk tensor copies (`-tma`);
  with `-reuse`, a program's consecutive tiles of one projection (and input part) share one wait, one
  read of the input and one count-in, at the last of them;
- `gluon` (`-resN-stS-gluon`, `probe_dataflow_gluon.py`): the same, each program keeping S - 1
  tiles in flight by bulk copies into a ring of shared-memory buffers across its waits;
- `per_phase`: the same kernel, one launch per phase (programmatic dependent launch as shipped);
- `shipped`: the service's fused projections (`fused_linear.launch`: norm prologue, gate/up and
  residual epilogues, split-K sums in the kernel), one launch per projection.

What it leaves out (the same for every arm): the attention (inside the QKV launch at one row), the
sampler and the next codebook's embedding (the next step reads the head's first 1024 outputs), the
residual adds (`dataflow` and `per_phase`; their norms have unit weights). So it times the
projections' chain, not a frame.

    python benchmarks/probe_dataflow_step.py                     # full size, on the GPU
    python benchmarks/probe_dataflow_step.py --variants 8x1024x4-pid-r128-s8,16x256x4
    python benchmarks/probe_dataflow_step.py --variants 16x1024x4-s8-res2-tma,16x1024x4-s8-res2-st3-gluon
    # the backbone's 16 layers and codebook 0's head (a decode step's projections), 4 steps chained;
    # the persistent kernel's items take a whole K (the backbone's 2048, its down projection split 4)
    python benchmarks/probe_dataflow_step.py --stack backbone --variants 16x2048x4-s4-res2-reuse,8x2048x4-s4-res2-reuse

What it found, and the design it points to: docs/performance.md, *One stream*.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serve_app.model.kernels import pdl

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # a Triton without host-side TMA descriptors
    TensorDescriptor = None

QKV, OUT, GATE_UP, DOWN, HEAD = range(5)
"""A phase's kind: a layer's four projections, then the codebook head after the last layer."""

EPS = tl.constexpr(1e-5)
"""RMSNorm's epsilon."""


@triton.jit
def _where5(i, a, b, c, d, e):
    """(a, b, c, d, e)[i] for a scalar i in 0..4."""
    return tl.where(i == 0, a, tl.where(i == 1, b, tl.where(i == 2, c, tl.where(i == 3, d, e))))


@triton.jit
def _item_scalars(g, D, Q, KV, INTER, V, LAYERS, SPLIT, BLOCK_N):
    """Item g's projection and tile, from its number alone: the frame's layout is fixed, so no
    table is read before the weights are requested. Items run phase by phase, column tile by tile.
    Scalars only, so that kernels of either language call it."""
    QKV_N = Q + 2 * KV
    T_QKV = (QKV_N + BLOCK_N - 1) // BLOCK_N
    T_OUT = (D + BLOCK_N - 1) // BLOCK_N
    T_GU = (2 * INTER + BLOCK_N - 1) // BLOCK_N
    T_DOWN = T_OUT * SPLIT
    T_HEAD = (V + BLOCK_N - 1) // BLOCK_N
    T_LAYER = T_QKV + T_OUT + T_GU + T_DOWN
    T_STEP = LAYERS * T_LAYER + T_HEAD
    W_LAYER = QKV_N * D + D * Q + 2 * INTER * D + D * INTER
    step = g // T_STEP
    r = g % T_STEP
    layer = tl.minimum(r // T_LAYER, LAYERS)  # LAYERS: the head
    q = r - layer * T_LAYER
    kind = tl.where(
        layer == LAYERS,
        4,
        tl.where(q < T_QKV, 0, tl.where(q < T_QKV + T_OUT, 1, tl.where(q < T_QKV + T_OUT + T_GU, 2, 3))),
    )
    tile = q - _where5(kind, 0, T_QKV, T_QKV + T_OUT, T_QKV + T_OUT + T_GU, 0)
    n = _where5(kind, QKV_N, D, INTER, D, V)
    k = _where5(kind, D, Q, D, INTER, D)
    split = tl.where(kind == 3, SPLIT, 1)
    w_off = tl.where(
        kind == 4,
        LAYERS * W_LAYER + step * (_padded_rows(V) * D),
        layer * W_LAYER + _where5(kind, 0, QKV_N * D, QKV_N * D + D * Q, QKV_N * D + D * Q + 2 * INTER * D, 0),
    )
    phase = step * (4 * LAYERS + 1) + tl.where(kind == 4, 4 * LAYERS, layer * 4 + kind)
    # The phase before: a layer's QKV reads the down projection before it (or, in layer 0, the
    # head of the step before, or the input); the head reads the last layer's down projection.
    prev_tiles = _where5(kind, tl.where(layer == 0, T_HEAD, T_DOWN), T_QKV, T_OUT, T_GU, T_DOWN)
    in_split = tl.where(((kind == 0) & (layer > 0)) | (kind == 4), SPLIT, 1)
    part = tile % split
    k_len = k // split
    # A split weight is stored part by part, each an (N, K / SPLIT) matrix: a tile's rows are
    # whole rows of its part. A tile is BLOCK_N weight rows: BLOCK_N output columns, or for
    # gate/up, whose weight holds each column's gate and up rows side by side, BLOCK_N // 2.
    w_base = w_off + part * n * k_len
    first_row = (tile // split) * BLOCK_N
    row_end = tl.where(kind == 2, 2 * n, n)
    return phase, kind, tile, part, n, k, k_len, part * k_len, w_base, prev_tiles, in_split, first_row, row_end


@triton.jit
def _rows(first_row, row_end, BLOCK_N: tl.constexpr):
    """A tile's weight rows (from `_item_scalars`), and which of them the weight has."""
    rows = first_row + tl.arange(0, BLOCK_N)
    return rows, rows < row_end


@triton.jit
def _padded_rows(rows):
    """A head's rows in the frame's weights, padded to 64: every weight starts on a 64-row boundary
    (whole tiles of any BLOCK_N up to 64 for the bulk copies)."""
    return (rows + 63) // 64 * 64


@triton.jit
def _columns(k0, BLOCK_K: tl.constexpr):
    """Columns k0 .. k0 + BLOCK_K of a chunk. k0 is a multiple of 16 (every K and offset is:
    `build_frame` checks), which `// 16 * 16` tells the compiler where a hint on a helper's argument
    would not reach its body: the loads become 16-byte vectors."""
    return k0 // 16 * 16 + tl.arange(0, BLOCK_K)


@triton.jit
def _weights(w_ptr, w_base, rows, row_ok, row_len, c0, BLOCK_K: tl.constexpr, ok=True):
    """A (BLOCK_N, BLOCK_K) weight tile: rows × columns c0.. of the (N, row_len) matrix at w_base."""
    starts = tl.multiple_of(w_base + rows * row_len, 16)
    kk = _columns(c0, BLOCK_K)
    return tl.load(w_ptr + starts[:, None] + kk[None, :], mask=row_ok[:, None] & ok, other=0.0)


@triton.jit
def _wait(done_ptr, phase, prev_tiles, SLEEP_NS: tl.constexpr):
    """Until the phase before has counted in all its programs."""
    if phase > 0:
        # Polled with plain reads (hundreds of waiting programs would queue their atomics on one
        # address in L2), then one acquiring read-modify-write orders the input's reads after the
        # producers' releases.
        while tl.load(done_ptr + phase - 1, volatile=True) < prev_tiles:
            if SLEEP_NS > 0:  # back off: the waiting programs' reads share L2 with the loads
                tl.inline_asm_elementwise(
                    f"nanosleep.u32 {SLEEP_NS}; mov.u32 $0, $1;", "=r,r", [prev_tiles], dtype=tl.int32,
                    is_pure=False, pack=1,
                )
        tl.atomic_add(done_ptr + phase - 1, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _input(act_ptr, in_off, in_split, D, k0, BLOCK_K: tl.constexpr):
    """The input's columns k0..: its split-K parts summed in a fixed order, rounded as a bf16
    activation would be."""
    kk = _columns(k0, BLOCK_K)
    x = tl.zeros([BLOCK_K], dtype=tl.float32)
    for s in range(in_split):
        x += tl.load(act_ptr + in_off + s * D + kk, cache_modifier=".cg")
    return x.to(tl.bfloat16).to(tl.float32)


@triton.jit
def _chunk(w, act_ptr, in_off, in_split, D, k0, BLOCK_K: tl.constexpr):
    """One K chunk: the partial sums of w with the input's columns k0.., and their squares."""
    x = _input(act_ptr, in_off, in_split, D, k0, BLOCK_K)
    return tl.sum(w.to(tl.float32) * x[None, :], axis=1), x * x


@triton.jit
def _finish(acc, sumsq, kind, tile, part, n, k, rows, row_ok, act_ptr, out_off, BLOCK_N: tl.constexpr):
    """Norm scale, SwiGLU, store."""
    # RMSNorm before the QKV, gate/up and head projections (unit weights), as a per-row scale of
    # the finished sums: those phases are not split, so the chunks saw the whole row.
    normed = (kind == 0) | (kind == 2) | (kind == 4)
    acc = tl.where(normed, acc / tl.sqrt(tl.sum(sumsq) / k + EPS), acc)
    if kind == 2:  # silu(gate) * up, rounded where the eager ops round
        gate, up = tl.split(tl.reshape(acc, (BLOCK_N // 2, 2)))
        gate = gate.to(tl.bfloat16).to(tl.float32)
        act = (gate * tl.sigmoid(gate)).to(tl.bfloat16).to(tl.float32)
        out = (act * up.to(tl.bfloat16).to(tl.float32)).to(tl.bfloat16).to(tl.float32)
        cols = tile * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)  # gate/up is not split
        tl.store(act_ptr + out_off + cols, out, mask=cols < n)
    else:
        tl.store(act_ptr + out_off + part * n + rows, acc, mask=row_ok)


@triton.jit
def _count_in(done_ptr, ticket_ptr, phase, num_phases, last_tiles, tiles=1):
    """This program's tiles of the phase are stored: count them in; the last phase's last program
    zeroes the counters."""
    tl.debug_barrier()  # every thread's stores are issued before the release below
    finished = tl.atomic_add(done_ptr + phase, tiles, sem="release", scope="gpu")
    if (phase == num_phases - 1) & (finished + tiles == last_tiles):
        # Every program has counted itself in and none reads the counters any more.
        for p in range(num_phases):
            tl.store(done_ptr + p, 0)
        tl.store(ticket_ptr, 0)


@triton.jit
def _frame_kernel(
    w_ptr,  # bf16: per layer its QKV, output, gate/up (each column's gate and up rows side by
    # side) and down weights, (N, K) each; then each step's head (V, D)
    act_ptr,  # fp32: slot 0 the input row; phase p's output (SPLIT, N) partial sums in slot p + 1
    ticket_ptr,  # int32 [1], zero between launches
    done_ptr,  # int32 per phase: its programs that have finished; zero between launches
    first_program,  # per_phase: this launch's first program
    num_phases,
    D: tl.constexpr,  # the depth decoder's width
    Q: tl.constexpr,  # queries' width (the output projection's input)
    KV: tl.constexpr,  # a key's (and a value's) width
    INTER: tl.constexpr,  # the MLP's width
    V: tl.constexpr,  # a codebook's size (the head's columns)
    LAYERS: tl.constexpr,
    SPLIT: tl.constexpr,  # the down projection's split-K parts
    ACT_SLOT: tl.constexpr,  # elements between activation slots
    DATAFLOW: tl.constexpr,
    TICKET: tl.constexpr,  # dataflow: programs ordered by an atomic ticket, else by program id
    SLEEP_NS: tl.constexpr,  # dataflow: a waiting program's pause between polls (0: none)
    BLOCK_N: tl.constexpr,  # weight rows a program (gate/up: BLOCK_N // 2 columns)
    BLOCK_K: tl.constexpr,
    PDL_WAIT: tl.constexpr,
    PDL_EARLY: tl.constexpr,
):
    """A program per (phase, tile): one launch for the frame (DATAFLOW), or one per phase."""
    if DATAFLOW and TICKET:
        g = tl.atomic_add(ticket_ptr, 1, sem="relaxed", scope="gpu")
    else:
        pdl.enter(PDL_WAIT, PDL_EARLY)
        g = first_program + tl.program_id(0)
    phase, kind, tile, part, n, k, k_len, k_lo, w_base, prev_tiles, in_split, first_row, row_end = _item_scalars(
        g, D, Q, KV, INTER, V, LAYERS, SPLIT, BLOCK_N
    )
    rows, row_ok = _rows(first_row, row_end, BLOCK_N)
    # The first weight tile is in flight before the wait: no phase writes weights.
    w = _weights(w_ptr, w_base, rows, row_ok, k_len, 0, BLOCK_K)
    if DATAFLOW:
        _wait(done_ptr, phase, prev_tiles, SLEEP_NS)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    sumsq = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(k_lo, k_lo + k_len, BLOCK_K):
        if k0 > k_lo:
            w = _weights(w_ptr, w_base, rows, row_ok, k_len, k0 - k_lo, BLOCK_K)
        part_acc, part_sq = _chunk(w, act_ptr, phase * ACT_SLOT, in_split, D, k0, BLOCK_K)
        acc += part_acc
        sumsq += part_sq
    _finish(acc, sumsq, kind, tile, part, n, k, rows, row_ok, act_ptr, (phase + 1) * ACT_SLOT, BLOCK_N)
    _count_in(done_ptr, ticket_ptr, phase, num_phases, (V + BLOCK_N - 1) // BLOCK_N)


@triton.jit
def _persistent_kernel(
    w_ptr,  # TMA: a descriptor of the weights as rows of 256, blocks (BLOCK_N * BLOCK_K // 256, 256)
    act_ptr,
    ticket_ptr,
    done_ptr,
    num_items,
    num_phases,
    D: tl.constexpr,
    Q: tl.constexpr,
    KV: tl.constexpr,
    INTER: tl.constexpr,
    V: tl.constexpr,
    LAYERS: tl.constexpr,
    SPLIT: tl.constexpr,
    ACT_SLOT: tl.constexpr,
    SLEEP_NS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,  # every item's whole K (each item is one tile)
    STAGES: tl.constexpr,  # the loop's software pipeline: weight tiles in flight ahead of the wait
    TMA: tl.constexpr,  # bulk tensor copies into shared memory, else pointer loads
    REUSE: tl.constexpr,  # consecutive tiles of one projection and input part: one wait, one input
    # read, one count-in (at the last of them)
):
    """Resident programs that take the frame's items in turn (program p: p, p + P, ...). The loop
    is software-pipelined: the weight tiles of the next STAGES - 1 items are loaded while the
    current item waits for its input. Every program must be resident at once (the host sizes the
    grid to the GPU), and items run in order on each, so the lowest unfinished item never waits on
    anything unstarted."""
    programs = tl.num_programs(0)
    held = -1  # REUSE: the projection and input part of the row in x (phase * 65536 + k_lo)
    x = tl.zeros([BLOCK_K], dtype=tl.float32)
    pending = 0  # REUSE: this program's tiles of the projection not yet counted in
    for g in tl.range(tl.program_id(0), num_items, programs, num_stages=STAGES):
        phase, kind, tile, part, n, k, k_len, k_lo, w_base, prev_tiles, in_split, first_row, row_end = (
            _item_scalars(g, D, Q, KV, INTER, V, LAYERS, SPLIT, BLOCK_N)
        )
        rows, row_ok = _rows(first_row, row_end, BLOCK_N)
        if TMA:
            # The tile's rows of 1024 as rows of 256 of the whole buffer (every weight starts at a
            # multiple of 256 elements; rows past a weight's end read the next one's or zeros, and
            # their sums are not stored).
            w = w_ptr.load([w_base // 256 + first_row * (BLOCK_K // 256), 0])
            w = tl.reshape(w, [BLOCK_N, BLOCK_K])
        else:
            w = _weights(w_ptr, w_base, rows, row_ok, k_len, 0, BLOCK_K)
        key = phase * 65536 + k_lo
        if (key != held) | (not REUSE):
            _wait(done_ptr, phase, prev_tiles, SLEEP_NS)
            x = _input(act_ptr, phase * ACT_SLOT, in_split, D, k_lo, BLOCK_K)
        held = key
        acc = tl.sum(w.to(tl.float32) * x[None, :], axis=1)
        _finish(acc, x * x, kind, tile, part, n, k, rows, row_ok, act_ptr, (phase + 1) * ACT_SLOT, BLOCK_N)
        pending += 1
        if REUSE:
            next_phase = _item_scalars(g + programs, D, Q, KV, INTER, V, LAYERS, SPLIT, BLOCK_N)[0]
            if (next_phase != phase) | (g + programs >= num_items):
                _count_in(done_ptr, ticket_ptr, phase, num_phases, (V + BLOCK_N - 1) // BLOCK_N, pending)
                pending = 0
        else:
            _count_in(done_ptr, ticket_ptr, phase, num_phases, (V + BLOCK_N - 1) // BLOCK_N)
            pending = 0


@dataclass
class Geometry:
    """A stack's shapes; the defaults are the depth decoder's (CSM-1B: a Llama of 4 layers, 1024
    wide, 8192 in its MLP). `stack_geometry` gives either of CSM-1B's stacks."""

    dim: int = 1024
    q_dim: int = 1024
    kv_dim: int = 256
    inter: int = 8192
    vocab: int = 2051
    layers: int = 4
    down_split: int = 4

    def act_slot(self) -> int:
        """Elements between activation slots: the widest output (split parts included), to 64."""
        widest = max(self.q_dim + 2 * self.kv_dim, self.dim * self.down_split, self.inter, self.vocab)
        return -(-widest // 64) * 64


STACKS = ("depth", "backbone")
"""The CSM-1B stacks the probe can lay out: the depth decoder (a frame: 31 steps, each ending in a
codebook head) or the backbone (a step: its 16 layers, then codebook 0's head)."""


def stack_geometry(stack: str, down_split: int = 4) -> Geometry:
    """The geometry of one of CSM-1B's stacks (`STACKS`), from the model's own config."""
    from serve_app.model.tiny import CSM_1B_CONFIG

    if stack not in STACKS:
        raise ValueError(f"a stack is one of {STACKS}, got {stack!r}")
    cfg = CSM_1B_CONFIG.decoder if stack == "depth" else CSM_1B_CONFIG.backbone
    return Geometry(
        dim=cfg.dim,
        q_dim=cfg.n_heads * cfg.head_dim,
        kv_dim=cfg.n_kv_heads * cfg.head_dim,
        inter=cfg.intermediate_size,
        vocab=CSM_1B_CONFIG.audio_vocab_size,
        layers=cfg.n_layers,
        down_split=down_split,
    )


@dataclass
class Frame:
    """`steps` depth steps' weights, activations and counters, and their phases (the kernel's
    layout, mirrored for the reference)."""

    geo: Geometry
    steps: int
    weights: torch.Tensor  # bf16, flat
    acts: torch.Tensor  # fp32, (phases + 1) slots of `act_slot`; the input row in slot 0
    ticket: torch.Tensor
    done: torch.Tensor
    phases: list[dict[str, int]] = field(default_factory=list)
    programs: int = 0
    weight_bytes_per_step: int = 0
    layer_weights: list[dict[str, torch.Tensor]] = field(default_factory=list)
    heads: list[torch.Tensor] = field(default_factory=list)


def build_frame(geo: Geometry, steps: int, block_n: int, device: torch.device, seed: int = 0) -> Frame:
    """Random weights (scaled to keep activations near 1) laid out as the kernel reads them."""
    gen = torch.Generator(device).manual_seed(seed)

    def weight(n: int, k: int) -> torch.Tensor:
        return (torch.randn(n, k, generator=gen, device=device) / k**0.5).to(torch.bfloat16)

    shipped = [
        {
            "qkv": weight(geo.q_dim + 2 * geo.kv_dim, geo.dim),
            "o": weight(geo.dim, geo.q_dim),
            "gate_up": weight(2 * geo.inter, geo.dim),  # the model's layout: gate rows, then up rows
            "down": weight(geo.dim, geo.inter),
        }
        for _ in range(geo.layers)
    ]
    heads = [weight(geo.vocab, geo.dim) for _ in range(steps)]
    pieces: list[torch.Tensor] = []
    for layer in shipped:
        pairs = torch.stack(layer["gate_up"].chunk(2), 1).reshape(2 * geo.inter, geo.dim)
        # the down projection part by part: each split part's (N, K / SPLIT) matrix in turn
        parts = layer["down"].view(geo.dim, geo.down_split, -1).transpose(0, 1)
        pieces += [layer["qkv"], layer["o"], pairs, parts]
    head_rows = -(-geo.vocab // 64) * 64  # `_padded_rows`: each head on a 64-row boundary
    padded_heads = [torch.cat([h, h.new_zeros(head_rows - geo.vocab, geo.dim)]) for h in heads]
    flat = torch.cat([w.reshape(-1) for w in pieces + padded_heads])
    layer_bytes = sum(w.numel() for w in pieces) * 2
    slot = geo.act_slot()

    phases: list[dict[str, int]] = []
    w_cursor = 0

    def add(kind: int, n: int, k: int, w_rows: int) -> None:
        nonlocal w_cursor
        split = geo.down_split if kind == DOWN else 1
        tiles = triton.cdiv(w_rows, block_n) * split
        index = len(phases)
        phases.append({"kind": kind, "n": n, "k": k, "split": split, "tiles": tiles, "w_off": w_cursor,
                       "in_off": index * slot, "out_off": (index + 1) * slot})
        w_cursor += w_rows * k

    layer_size = sum(w.numel() for w in pieces[:4])
    heads_base = geo.layers * layer_size
    for step in range(steps):
        for layer in range(geo.layers):
            w_cursor = layer * layer_size
            add(QKV, geo.q_dim + 2 * geo.kv_dim, geo.dim, geo.q_dim + 2 * geo.kv_dim)
            add(OUT, geo.dim, geo.q_dim, geo.dim)
            add(GATE_UP, geo.inter, geo.dim, 2 * geo.inter)
            add(DOWN, geo.dim, geo.inter, geo.dim)
        w_cursor = heads_base + step * head_rows * geo.dim
        add(HEAD, geo.vocab, geo.dim, geo.vocab)
    acts = torch.zeros((len(phases) + 1) * slot, dtype=torch.float32, device=device)
    acts[: geo.dim] = torch.randn(geo.dim, generator=gen, device=device).to(torch.bfloat16).float()
    frame = Frame(
        geo=geo, steps=steps, weights=flat, acts=acts,
        ticket=torch.zeros(1, dtype=torch.int32, device=device),
        done=torch.zeros(len(phases), dtype=torch.int32, device=device),
        phases=phases, programs=sum(p["tiles"] for p in phases),
        weight_bytes_per_step=layer_bytes + heads[0].numel() * 2,
        layer_weights=shipped, heads=heads,
    )
    return frame


_SWITCH_FLAGS = {"tma": {"tma": True}, "pid": {"ticket": False}, "gluon": {"gluon": True}, "reuse": {"reuse": True}}
"""A variant's switches: the flag, then the setting it gives."""

_NUMERIC_FLAGS = {"st": "stages", "res": "resident", "r": "maxnreg", "z": "sleep_ns", "s": "down_split"}
"""A variant's numeric flags: the prefix, then the setting it gives (`-res2`: resident=2)."""


class Variant(NamedTuple):
    """A kernel configuration: `BNxBKxWARPS[-pid][-rREGS][-sSPLIT][-zNS][-resN[-stN][-tma|-gluon]]`,
    e.g. `8x1024x4-pid-r128-s8`, or `8x1024x4-s8-res2-st3-tma` for the persistent kernel and
    `16x1024x4-s8-res2-st3-gluon` for the Gluon one (BK: every item's K)."""

    block_n: int
    block_k: int
    num_warps: int
    ticket: bool = True  # `-pid`: order programs by program id (the hardware places them in order)
    maxnreg: int | None = None  # `-r128`: cap the registers (more programs resident an SM)
    down_split: int = 4  # `-s8`: the down projection's split-K parts
    sleep_ns: int = 0  # `-z200`: a waiting program's pause between polls, in nanoseconds
    resident: int = 0  # `-res2`: the persistent kernel, with 2 programs an SM (0: a program per tile)
    stages: int = 2  # `-st3`: the persistent loop's pipeline stages (weight tiles in flight + 1)
    tma: bool = False  # `-tma`: the persistent kernel's weights by bulk tensor copies
    gluon: bool = False  # `-gluon`: the Gluon kernel, a ring of `stages` buffers a program
    reuse: bool = False  # `-reuse`: the persistent kernel's consecutive tiles of one projection share
    # one wait, one input read and one count-in

    @classmethod
    def parse(cls, text: str) -> Variant:
        head, *flags = text.split("-")
        block_n, block_k, warps = (int(v) for v in head.split("x"))
        variant = cls(block_n, block_k, warps)
        for flag in flags:
            if flag in _SWITCH_FLAGS:
                variant = variant._replace(**_SWITCH_FLAGS[flag])
                continue
            prefix = next((p for p in _NUMERIC_FLAGS if flag.startswith(p) and flag[len(p) :].isdigit()), None)
            if prefix is None:
                raise ValueError(f"unknown variant flag {flag!r} in {text!r}")
            variant = variant._replace(**{_NUMERIC_FLAGS[prefix]: int(flag[len(prefix) :])})
        return variant


def _launch(frame: Frame, variant: Variant, grid: int, first: int, dataflow: bool, **options: object) -> None:
    geo = frame.geo
    if variant.maxnreg:
        options["maxnreg"] = variant.maxnreg
    _frame_kernel[(grid,)](
        frame.weights, frame.acts, frame.ticket, frame.done, first, len(frame.phases),
        **_geometry_args(geo), DATAFLOW=dataflow, TICKET=variant.ticket, SLEEP_NS=variant.sleep_ns,
        BLOCK_N=variant.block_n, BLOCK_K=variant.block_k, num_warps=variant.num_warps, **options,
    )


def launch_dataflow(frame: Frame, variant: Variant) -> None:
    """The whole frame in one launch."""
    _launch(frame, variant, frame.programs, 0, True, PDL_WAIT=False, PDL_EARLY=False)


def launch_per_phase(frame: Frame, variant: Variant) -> None:
    """The same kernel, a launch per phase, each a dependent of the one before (as shipped)."""
    options = pdl.launch_options(frame.acts.device)
    first = 0
    for phase in frame.phases:
        _launch(frame, variant, phase["tiles"], first, False, **options)
        first += phase["tiles"]


def _geometry_args(geo: Geometry) -> dict[str, int]:
    return {"D": geo.dim, "Q": geo.q_dim, "KV": geo.kv_dim, "INTER": geo.inter, "V": geo.vocab,
            "LAYERS": geo.layers, "SPLIT": geo.down_split, "ACT_SLOT": geo.act_slot()}


def launch_persistent(frame: Frame, variant: Variant) -> int:
    """The persistent kernel over the whole frame; returns its grid. Every item must be one tile
    (its K, split parts included, equal to BLOCK_K), and every program resident: the grid is
    `resident` programs per SM, refused above what the compiled kernel's registers allow (one
    program on Triton's interpreter, which runs programs one after another)."""
    if any(p["k"] // p["split"] != variant.block_k for p in frame.phases):
        raise ValueError(f"the persistent kernel needs every item's K to be BLOCK_K = {variant.block_k}")
    weights: object = frame.weights
    if variant.tma:
        if TensorDescriptor is None or variant.block_k % 256 or frame.weights.numel() % 256:
            raise ValueError("bulk tensor copies need Triton's TensorDescriptor and rows of 256")
        rows = frame.weights.view(-1, 256)
        weights = TensorDescriptor.from_tensor(rows, [variant.block_n * variant.block_k // 256, 256])
    args = (weights, frame.acts, frame.ticket, frame.done, frame.programs, len(frame.phases))
    kwargs = {**_geometry_args(frame.geo), "SLEEP_NS": variant.sleep_ns, "BLOCK_N": variant.block_n,
              "BLOCK_K": variant.block_k, "STAGES": variant.stages, "TMA": variant.tma, "REUSE": variant.reuse,
              "num_warps": variant.num_warps}
    if variant.maxnreg:
        kwargs["maxnreg"] = variant.maxnreg
    grid = resident_programs(_persistent_kernel, args, kwargs, variant) if frame.acts.device.type == "cuda" else 1
    _persistent_kernel[(grid,)](*args, **kwargs)
    return grid


def resident_programs(kernel, args: tuple[object, ...], kwargs: dict[str, object], variant: Variant) -> int:  # type: ignore[no-untyped-def]
    """The grid of `variant.resident` programs an SM, refused above what the compiled kernel's
    registers and shared memory let be resident at once (a program not yet placed would leave the
    others waiting on its items forever)."""
    compiled = kernel.warmup(*args, grid=(1,), **kwargs)
    compiled._init_handles()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    threads = 32 * variant.num_warps
    shared = max(1, compiled.metadata.shared)
    fits = min(65536 // max(1, compiled.n_regs * threads), 2048 // threads, 32, 232_448 // shared)
    if variant.resident > fits:
        raise ValueError(
            f"{variant.resident} programs an SM do not fit ({fits} do: {compiled.n_regs} registers, {shared} B shared)"
        )
    return props.multi_processor_count * variant.resident


def phase_output(frame: Frame, index: int) -> torch.Tensor:
    """Phase `index`'s output row: its split parts summed, rounded as the next phase reads it."""
    p = frame.phases[index]
    parts = frame.acts[p["out_off"] : p["out_off"] + p["split"] * p["n"]].view(p["split"], p["n"])
    total = parts[0].clone()
    for s in range(1, p["split"]):
        total += parts[s]
    return total.to(torch.bfloat16).float()


def phase_reference(frame: Frame, index: int, x: torch.Tensor) -> torch.Tensor:
    """Phase `index`'s output for the input row x, in plain PyTorch (fp32 sums of bf16 values)."""
    p = frame.phases[index]
    rows = p["n"] * (2 if p["kind"] == GATE_UP else 1)
    w = frame.weights[p["w_off"] : p["w_off"] + rows * p["k"]]
    w = w.view(p["split"], rows, p["k"] // p["split"]).transpose(0, 1).reshape(rows, p["k"]).float()
    x = x[: p["k"]].to(torch.bfloat16).float()  # the output projection reads the queries' columns
    scale = torch.rsqrt(x.pow(2).mean() + EPS.value) if p["kind"] in (QKV, GATE_UP, HEAD) else 1.0
    y = (w @ x) * scale
    if p["kind"] == GATE_UP:
        gate, up = y[0::2].to(torch.bfloat16).float(), y[1::2].to(torch.bfloat16).float()
        act = torch.nn.functional.silu(gate).to(torch.bfloat16).float()
        return (act * up).to(torch.bfloat16).float()
    return y.to(torch.bfloat16).float()


def phase_input(frame: Frame, index: int) -> torch.Tensor:
    """What phase `index` read: the output of the phase before, or the input row."""
    return phase_output(frame, index - 1) if index else frame.acts[: frame.geo.dim]


def max_phase_error(frame: Frame) -> float:
    """The largest difference of a phase's output from PyTorch's on the same input, against the
    output's largest value, over every phase."""
    worst = 0.0
    for index in range(len(frame.phases)):
        want = phase_reference(frame, index, phase_input(frame, index))
        worst = max(worst, float((phase_output(frame, index) - want).abs().max() / want.abs().max()))
    return worst


def reference(frame: Frame) -> list[torch.Tensor]:
    """Every phase's output from the input row, in plain PyTorch."""
    outs: list[torch.Tensor] = []
    x = frame.acts[: frame.geo.dim]
    for index in range(len(frame.phases)):
        x = phase_reference(frame, index, x)
        outs.append(x)
    return outs


def shipped_chain(frame: Frame) -> torch.Tensor:
    """The same chain through the service's fused projections (norms and residuals included)."""
    from serve_app.model.kernels import fused_linear

    geo = frame.geo
    norm = torch.ones(geo.dim, dtype=torch.bfloat16, device=frame.weights.device)
    x = frame.acts[: geo.dim].to(torch.bfloat16)[None, :].contiguous()
    for step in range(frame.steps):
        for layer in frame.layer_weights:
            qkv = fused_linear.launch(x, layer["qkv"], norm_weight=norm)
            h = fused_linear.launch(qkv[:, : geo.q_dim], layer["o"], residual=x)
            act = fused_linear.launch(h, layer["gate_up"], norm_weight=norm, gate_up=True)
            x = fused_linear.launch(act, layer["down"], residual=h)
        logits = fused_linear.launch(x, frame.heads[step], norm_weight=norm)
        x = logits[:, : geo.dim]
    return x


def time_graph(fn, replays: int) -> float:  # type: ignore[no-untyped-def]
    """Milliseconds a replay of `fn` captured as a CUDA graph."""
    fn()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        fn()  # the capture stream's first use
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, stream=stream):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", choices=STACKS, default="depth", help="which of CSM-1B's stacks to lay out")
    parser.add_argument("--steps", type=int, default=None, help="passes chained (default: depth 31, backbone 4)")
    parser.add_argument("--variants", default="16x256x4,8x512x4,4x1024x4", help="Variant.parse, comma-separated")
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--no-shipped", action="store_true", help="skip the shipped kernels' arm")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("a CUDA device is needed (the kernel's tests run it under Triton's interpreter)")
        return 2
    device = torch.device("cuda")
    geo = stack_geometry(args.stack)
    if args.steps is None:
        args.steps = 31 if args.stack == "depth" else 4
    variants = [Variant.parse(text) for text in args.variants.split(",") if text]
    gpu = torch.cuda.get_device_name().lower().replace(" ", "-")
    name = "dataflow-step-probe" if args.stack == "depth" else "dataflow-backbone-probe"
    path = Path(args.out) / f"{dt.date.today().isoformat()}-{gpu}-{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    argv_shown = argv if argv is not None else sys.argv[1:]
    fields: dict[str, object] = {
        "benchmark": "dataflow-step-probe",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/probe_dataflow_step.py", *argv_shown]),
        "device": torch.cuda.get_device_name(),
        "stack": args.stack,
        "steps": args.steps,
        "variants": [],
    }
    frame, built_for = None, None
    for variant in variants:
        if (variant.block_n, variant.down_split) != built_for:
            frame = None  # one frame's weights on the device at a time
            torch.cuda.empty_cache()
            frame = build_frame(replace(geo, down_split=variant.down_split), args.steps, variant.block_n, device)
            built_for = (variant.block_n, variant.down_split)
            fields["weight_mb_per_step"] = round(frame.weight_bytes_per_step / 1e6, 1)
        if "shipped_us_per_step" not in fields and not args.no_shipped:
            ms = time_graph(lambda frame=frame: shipped_chain(frame), args.replays)
            fields["shipped_us_per_step"] = round(ms * 1000 / args.steps, 2)
            fields["shipped_tb_per_s"] = round(frame.weight_bytes_per_step * args.steps / (ms / 1000) / 1e12, 2)
            print(json.dumps({k: v for k, v in fields.items() if k != "variants"}), flush=True)
        row: dict[str, object] = {"variant": variant._asdict(), "programs": frame.programs, "phases": len(frame.phases)}
        if variant.gluon:
            from probe_dataflow_gluon import launch_gluon  # Hopper and a Triton with Gluon only

            arms: tuple[tuple[str, object], ...] = (("gluon", launch_gluon),)
        elif variant.resident:
            arms = (("persistent", launch_persistent),)
        else:
            arms = (("dataflow", launch_dataflow), ("per_phase", launch_per_phase))
        for arm, launcher in arms:
            frame.acts[geo.dim :].zero_()
            launcher(frame, variant)
            torch.cuda.synchronize()
            row[f"{arm}_max_phase_relative_err"] = round(max_phase_error(frame), 4)
            row[f"{arm}_counters_zero"] = bool(frame.done.eq(0).all() and frame.ticket.eq(0).all())
            ms = time_graph(lambda f=frame, v=variant, run=launcher: run(f, v), args.replays)
            row[f"{arm}_us_per_step"] = round(ms * 1000 / args.steps, 2)
            row[f"{arm}_tb_per_s"] = round(frame.weight_bytes_per_step * args.steps / (ms / 1000) / 1e12, 2)
        print(json.dumps(row), flush=True)
        fields["variants"].append(row)  # type: ignore[attr-defined]
        path.write_text(json.dumps(fields, indent=1))  # after every variant: a hang keeps the rest
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
