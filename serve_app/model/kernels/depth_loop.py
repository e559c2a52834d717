"""A frame's depth steps at batch 1 in one persistent launch (`DepthLoop`, run by `FastStep.depth_frame`).

At batch 1 a frame is, after the backbone step and the frame's first depth pass, 30 depth steps of
18 launches each (per layer the QKV projection with its attention, the output projection, gate/up,
down; the codebook head; the sampler), every one needing the whole row of the one before: a chain
of small launches, each boundary draining the GPU and filling it again. Here codebooks 2..31 are one
launch of resident programs (`RESIDENT` an SM) that take the steps' items in turn: program p runs
items p, p + P, p + 2P, … of each step (`SAME_ITEMS_EACH_STEP`). An item is

- a tile of `BLOCK_N` weight rows of one projection (QKV, output, gate/up, down, or the codebook
  head) over the whole input row (K = the decoder's width; the down projection's K in parts of it);
- one kv head's attention (`decode_attention.attend_row`: RoPE, the cache write, attention);
- the draw (`sampling.draw_row`), which writes the codebook's id and copies the next step's input
  row from the table of projected embeddings; its race noise needs no logit, so the head's items
  draw it (`sampling.race_noise`) before their wait.

Items wait on per-phase counters, not grid barriers: an item polls the counter of the phase whose
output it reads until every item of that phase has counted in. An item's weight tile is requested
before its wait (no phase writes weights), so the weights stream while the chain advances; a
program's consecutive items of one phase (and input part) share one wait, one read of the input
row and one count-in, after the last of them. Every program is resident and runs its items in
order, and an item waits only on items numbered below it, so the launch cannot deadlock. Residency is
checked against the compiled kernel (`_resident_grid`), not granted by the runtime: programs not yet
placed are placed as other kernels end, so one loop at a time on a GPU (one engine a GPU, as deployed).
Two loops at once on one GPU (two engines of one process, or processes sharing it through MPS) could
each hold SM slots the other's unplaced programs need; items handed out by an atomic ticket instead of
by program number (`TICKETS`) lift that, at an atomic an item (not measured yet).

The design was chosen by `benchmarks/probe_dataflow_step.py` (the projections' chain alone, on an
H100: 116.96 µs a depth step against the shipped launches' 143.68, `-reuse` by pointer loads,
`benchmarks/results/2026-12-06-0926-nvidia-h100-80gb-hbm3-dataflow-step-probe-reuse.json`). Measured
here (`benchmarks/bench_depth_loop.py`, H100, `…-1004-nvidia-h100-80gb-hbm3-depth-loop.json`): 156.3
µs a depth step, by phase (the layers summed) QKV 15.2, attention 21.2, output 9.7, gate/up 61.6,
down 32.8, head 4.9, draw 11.1; the one-row depth frame 4.97 ms against 5.49 as launches, the same
codes. Asking each program's gate/up tiles into L2 at a layer's start (bulk prefetch) made gate/up
faster (53.7) and everything else slower (174.6 a step): not kept (the code is in the history at
56ce807).

Layout: the decoder's layers' weights are views of one flat buffer (`pack_decoder`), a layer's
QKV, output, gate/up and down weights and its two norms at fixed offsets, so an item finds its
weight from its number; the layers' key/value caches are views of one tensor each
(`Transformer.setup_caches`).

Numerics: as the fused projections (`fused_linear`): fp32 sums, the norm's x * weight rounded to
bf16 once and 1 / rms applied to the finished sums, SwiGLU and the residual adds rounded where the
eager ops round, the down projection's parts summed in a fixed order. The sums run in another
order than the launches' (within bf16 tolerance of them, checked by the tests); the attention and
the draw are the launches' own code.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from serve_app.constants import NUM_CODEBOOKS
from serve_app.model.kernels.decode_attention import (
    attend_new_row,
    attend_row,
    cached_rows,
    kernel_constants,
    rope_at,
)
from serve_app.model.kernels.keys import settle
from serve_app.model.kernels.sampling import TOP_K_FAST, draw_row, race_noise

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
_INTERPRETED = tl.constexpr(INTERPRETED)

BLOCK_N = 16
"""Weight rows an item (gate/up: 8 gate and 8 up rows, 8 output columns)."""

NUM_WARPS = 4

RESIDENT = 2
"""Programs an SM (at 4 warps the kernel takes 255 registers a thread: 2 fit). µs a depth step on an
H100 (`…-0942-nvidia-h100-80gb-hbm3-depth-loop-settings.json`, the first form, its draw hashing its
noise itself), programs an SM x warps: 2 x 4 159.1, 1 x 4 187.4, 1 x 8 184.1, 2 x 2 346.2, 3 x 2 352.9,
4 x 2 343.1; with `MAX_REGISTERS` (`…-1219-…-depth-loop-settings.json`): 3 x 4 at 168 registers 327.3,
4 x 4 at 128 474.6, against 156.3 uncapped."""

WAIT_BY_ACQUIRING_READS = True
"""Whether an item's wait polls its phase counter with acquiring reads (`ld.acquire.gpu`), the read
that sees the count being the acquire, instead of plain reads followed by one acquiring
read-modify-write (an atomic add of 0): one round trip to L2 fewer on every phase boundary of the
chain, 22 a depth step. On one H100, in one call, with the draw's search above: 137.96 µs a depth step
against 139.52 without it, the one-row depth frame 4.360 ms against 4.411, the same codes
(`benchmarks/results/2026-12-07-1310-nvidia-h100-80gb-hbm3-depth-loop-kth-acquire.json`, `…-1311-…-depth-loop-kth.json`).
Read at import; the interpreter, which runs no PTX, takes the plain reads."""

_ACQUIRING_READS = tl.constexpr(WAIT_BY_ACQUIRING_READS and not INTERPRETED)

TICKETS = False
"""Whether programs take items by an atomic ticket (the next unhanded item) instead of by their number
(program p: p, p + P, ...). Then the lowest unfinished item is always held by a running program, so
the launch finishes however few of its programs are resident (another loop on the GPU, processes
sharing it through MPS); it costs an atomic an item, taken one item ahead. Off: on an H100 it cost
2.6 µs a depth step (158.9 against 156.3) and took the whole gain of `KEYS_BEFORE_WAIT` with it (159.2
with both; `benchmarks/results/2026-12-06-1219-nvidia-h100-80gb-hbm3-depth-loop-settings.json`), so
the loop assumes it is the only one on its GPU (one engine a GPU, as deployed)."""

SAME_ITEMS_EACH_STEP = True
"""Whether program p runs items p, p + P, ... of every step (each step's items numbered from 0)
instead of of the whole launch. CSM-1B's step has 6922 items, not a multiple of an H100's 264
programs, so by launch numbering the rare items (a layer's 96 QKV, 64 output and 2 attention items,
the head's 129, the one draw) move to other programs every step; with the same items every step a
program runs the same code every step (the draw always on one program). On, as part of the fastest
measured setting (with `DRAW_KTH_BY_BITS` and `NEXT_TILE_AHEAD`, below); alone it changed nothing on an
H100 (148.96 µs a step against 148.75; with the bit-by-bit draw 148.98 against 147.18: the setting
without it and with the tile ahead was not measured; `benchmarks/results/2026-12-06-1655-nvidia-h100-80gb-hbm3-depth-loop-same-items-bits-next.json`)."""

DRAW_KTH_BY_BITS = True
"""Whether the draw finds its k-th score bit by bit (`sampling._kth_by_bits`: 32 counts of the row
in a loop of a few instructions) instead of by a bitonic top-64 (or, for larger k, a sort) that
unrolls into some 7.6k of the kernel's 12k sm_90 instructions. The same k-th score, so the same ids.
The kernel compiles to 4.4k instructions with it, which is what lets `NEXT_TILE_AHEAD` pay: on an
H100 alone 147.18 µs a step against 148.75 (the draw 9.9 µs against 11.2, the first step 153 against
168); with the other two switches 140.99 (`benchmarks/results/2026-12-06-1655-nvidia-h100-80gb-hbm3-depth-loop-same-items-bits-next.json`).
Since, the search takes two bits a turn (three counts packed in one sum) over the bf16 logits' 16
bits (the k-th logit: `sampling.draw_row`), 8 sums of the row where it took 32: on one H100, in one
call, the traced draw 6.78 µs a depth step against 10.18, the step 139.52 against 141.24, the one-row
depth frame 4.411 ms against 4.457, the same codes
(`benchmarks/results/2026-12-07-1311-nvidia-h100-80gb-hbm3-depth-loop-kth.json` against `…-1309-…-depth-loop-base.json`)."""

KEYS_BEFORE_WAIT = True
"""Whether an attention item loads its kv head's older keys and values (and the position's RoPE)
before its wait, then takes the new key and value from registers (`decode_attention.attend_new_row`:
`attend_row`'s numbers, bit for bit) instead of writing them and reading the block back after it:
two dependent memory trips fewer on the chain. It runs where every program has a gate/up item in
every layer (so the older keys are final when it gets there) and the frame's positions fit one key
block. On: on an H100 the attention's phase took 14.3 µs a depth step against 21.5, the step 148.9
against 156.3, the one-row depth frame 4.77 ms against 4.96, the same codes
(`benchmarks/results/2026-12-06-1219-nvidia-h100-80gb-hbm3-depth-loop-settings.json`)."""

NEXT_TILE_AHEAD = True
"""Whether a projection item (not the head's) whose program's next item is of its own phase requests
that item's weight tile once its own wait is over, so a program streaming a phase's tiles always has
one requested: the MLP's phases (94 of a depth step's 149 µs on an H100) read their 50 MB a layer at
2.0–2.2 TB/s of 3.35 with a gap between tiles. The tile is carried to the next turn of the loop as
int32 words of two bf16 weights each, in the registers its load fills (`_projection_words`,
`_words_dot`, `_held`); an item whose tile was not requested for it requests its own before its wait.
The sums run in another order than the path without it (the even and odd columns apart).
On, with `SAME_ITEMS_EACH_STEP` and `DRAW_KTH_BY_BITS`: on an H100 140.99 µs a step against 148.75
(gate/up 52.9 against 60.0, down 31.2 against 32.2, the draw 10.1 against 11.2), the one-row depth
frame 4.45 ms against 4.76 (`benchmarks/results/2026-12-06-1655-nvidia-h100-80gb-hbm3-depth-loop-same-items-bits-next.json`), the engine's one stream
5.58 ms a frame against 5.86 (two runs each, in turn,
`…-1657-nvidia-h100-80gb-hbm3-engine-one-stream-loop-switches.json`). With the draw's sort in the kernel
it did not pay: 148.5 µs against 149.5, the short phases slower as the kernel grew (the draw 14.7
against 11.3, `…-1425-…-depth-loop-next-tile-in-phase.json`); earlier forms, every item requesting its
program's next projection tile (before its wait: 155.8 against 148.6, after it: 155.4 against 148.8)
and a bf16 tile carried across the loop (212.8 against 150.7), were slower still."""

MAX_REGISTERS: int | None = None
"""A cap on the kernel's registers a thread (Triton's `maxnreg`), so more programs fit an SM; the
excess spills to local memory. Uncapped it takes 255 at 4 warps, 2 programs an SM
(`benchmarks/results/2026-12-06-1130-cpu-kernels-sm90-triton-3.8.json`); 168 fits 3, 128 fits 4. Both
were slower on an H100, the spills costing more than the programs gain (`RESIDENT`)."""

SPARE_PROGRAMS = 0
"""Program slots of the GPU the launch leaves free, for kernels on other streams. Resident programs
fill every SM, so the streaming audio decode queued beside a frame waits for the loop's end: a
stream's first chunk came later (H100, `bench_engine.py`, time to first audio p50 / one-row frame:
loop off 14.4 ms / 6.55 ms; 0 spare 17.84 / 5.96; 32 spare 15.91 / 6.38; 132 spare 16.08 / 6.95,
`benchmarks/results/2026-12-06-1009-…-engine-depth-loop-{off,on}.json`, `…-1010-…-spare-*.json`)."""

FIRST_CODEBOOK = 2
"""The loop's first codebook: codebooks 0 and 1 come from the frame's first depth pass."""

QKV, ATTEND, OUT, GATE_UP, DOWN, HEAD, DRAW = (tl.constexpr(kind) for kind in range(7))
"""Item kinds. A layer's phases are its first five, in order; a step ends with the head and the draw."""


@dataclass(frozen=True)
class Geometry:
    """The decoder's shapes as the kernel needs them."""

    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    inter: int
    layers: int
    vocab: int  # the codebook head's columns (the whole audio vocabulary)
    vocab_limit: int  # columns drawn from (the first vocab_limit)
    positions: int  # the decoder's cache positions per slot (+ 1 scratch)

    @property
    def qkv_dim(self) -> int:
        return (self.n_heads + 2 * self.n_kv_heads) * self.head_dim

    @property
    def split(self) -> int:
        """The down projection's K parts, each the decoder's width."""
        return self.inter // self.dim


def _pad(n: int) -> int:
    return -(-n // 64) * 64


@dataclass(frozen=True)
class Layout:
    """Element offsets of one layer's weights in the flat buffer, its stride, the final norm's."""

    qkv: int
    out: int
    gate_up: int
    down: int
    attention_norm: int
    ffn_norm: int
    layer: int
    final_norm: int

    @classmethod
    def of(cls, geo: Geometry) -> Layout:
        sizes = [
            geo.qkv_dim * geo.dim,
            geo.dim * geo.n_heads * geo.head_dim,
            2 * geo.inter * geo.dim,
            geo.dim * geo.inter,
            geo.dim,
            geo.dim,
        ]
        offsets = [0]
        for size in sizes[:-1]:
            offsets.append(offsets[-1] + _pad(size))
        layer = offsets[-1] + _pad(sizes[-1])
        return cls(*offsets, layer=layer, final_norm=geo.layers * layer)


def supports(geo: Geometry) -> bool:
    """Whether the kernel runs this geometry: every projection's K is the decoder's width (the
    queries' width too, the MLP's a multiple of it), a power of two, and the attention kernel's
    head size."""
    return (
        geo.n_heads * geo.head_dim == geo.dim
        and geo.inter % geo.dim == 0
        and geo.dim & (geo.dim - 1) == 0
        and geo.dim >= 16
        and geo.head_dim % BLOCK_N == 0
        and geo.head_dim >= 32
    )


def geometry(decoder: torch.nn.Module, vocab: int, vocab_limit: int) -> Geometry:
    cfg = decoder.cfg
    return Geometry(
        dim=cfg.dim, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
        inter=cfg.intermediate_size, layers=cfg.n_layers, vocab=vocab, vocab_limit=vocab_limit,
        positions=decoder.max_seq_len + 1,
    )


def pack_decoder(decoder: torch.nn.Module, geo: Geometry) -> torch.Tensor:
    """Move the decoder's layer weights and norms into one flat buffer (`Layout`) and make the
    modules' parameters views of it (no copy is left behind); returns the buffer."""
    layout = Layout.of(geo)
    first = decoder.layers[0].attention.wqkv.weight
    packed = getattr(decoder, "_packed_weights", None)
    if packed is not None and first.data_ptr() == packed.data_ptr() + layout.qkv * packed.element_size():
        return packed  # packed already (another step function over the same model)
    flat = torch.zeros(layout.final_norm + _pad(geo.dim), dtype=first.dtype, device=first.device)

    def place(param: torch.nn.Parameter, offset: int) -> None:
        view = flat[offset : offset + param.numel()].view(param.shape)
        view.copy_(param.data)
        param.data = view

    for i, layer in enumerate(decoder.layers):
        base = i * layout.layer
        place(layer.attention.wqkv.weight, base + layout.qkv)
        place(layer.attention.wo.weight, base + layout.out)
        place(layer.feed_forward.w13.weight, base + layout.gate_up)
        place(layer.feed_forward.w2.weight, base + layout.down)
        place(layer.attention_norm.weight, base + layout.attention_norm)
        place(layer.ffn_norm.weight, base + layout.ffn_norm)
    place(decoder.norm.weight, layout.final_norm)
    decoder._packed_weights = flat
    return flat


# ---- the item map ------------------------------------------------------------------------------
@triton.jit
def _item(g, QKV_N: tl.constexpr, D: tl.constexpr, INTER: tl.constexpr, HKV: tl.constexpr, V: tl.constexpr,
          LAYERS: tl.constexpr, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr):
    """Item g's step, layer (LAYERS: the head and the draw), kind, index within its phase, phase
    number, and the item count of the phase before (which it waits on)."""
    T_QKV: tl.constexpr = (QKV_N + BLOCK_N - 1) // BLOCK_N
    T_OUT: tl.constexpr = (D + BLOCK_N - 1) // BLOCK_N
    T_GU: tl.constexpr = 2 * INTER // BLOCK_N
    T_DOWN: tl.constexpr = T_OUT * SPLIT
    T_HEAD: tl.constexpr = (V + BLOCK_N - 1) // BLOCK_N
    T_LAYER: tl.constexpr = T_QKV + HKV + T_OUT + T_GU + T_DOWN
    T_STEP: tl.constexpr = LAYERS * T_LAYER + T_HEAD + 1
    PHASES: tl.constexpr = 5 * LAYERS + 2
    step = g // T_STEP
    r = g % T_STEP
    layer = tl.minimum(r // T_LAYER, LAYERS)
    q = r - layer * T_LAYER
    in_layer = layer < LAYERS
    e1 = T_QKV
    e2 = e1 + HKV
    e3 = e2 + T_OUT
    e4 = e3 + T_GU
    kind = tl.where(
        in_layer,
        tl.where(q < e1, QKV, tl.where(q < e2, ATTEND, tl.where(q < e3, OUT, tl.where(q < e4, GATE_UP, DOWN)))),
        tl.where(q < T_HEAD, HEAD, DRAW),
    )
    start = tl.where(
        in_layer,
        tl.where(kind == QKV, 0, tl.where(kind == ATTEND, e1, tl.where(kind == OUT, e2, tl.where(
            kind == GATE_UP, e3, e4)))),
        tl.where(kind == HEAD, 0, T_HEAD),
    )
    index = q - start
    phase = step * PHASES + layer * 5 + kind - tl.where(in_layer, 0, 5)  # a layer's kinds are its phases
    # QKV of layer 0 reads the draw before it (one item), of a later layer the down projection;
    # each other phase the phase before it in the list.
    prev = tl.where(
        kind == QKV,
        tl.where(layer == 0, 1, T_DOWN),
        tl.where(kind == ATTEND, T_QKV, tl.where(kind == OUT, HKV, tl.where(kind == GATE_UP, T_OUT, tl.where(
            kind == DOWN, T_GU, tl.where(kind == HEAD, T_DOWN, T_HEAD))))),
    )
    return step, layer, kind, index, phase, prev


@triton.jit
def _is_projection(kind, g, num_items):
    """Whether item g exists and is a layer's projection item (NEXT_TILE_AHEAD's tiles)."""
    return (g < num_items) & (kind != ATTEND) & (kind != DRAW) & (kind != HEAD)


@triton.jit
def _projection_words(w_ptr, g, num_items, QKV_N: tl.constexpr, D: tl.constexpr, INTER: tl.constexpr,
                      HKV: tl.constexpr, V: tl.constexpr, LAYERS: tl.constexpr, SPLIT: tl.constexpr,
                      L_QKV: tl.constexpr, L_OUT: tl.constexpr, L_GU: tl.constexpr, L_DOWN: tl.constexpr,
                      L_STRIDE: tl.constexpr, BLOCK_N: tl.constexpr):
    """Item g's weight tile as 32-bit words where g is a projection item (nothing is read where not):
    (BLOCK_N, D // 2) of two 16-bit weights each (the even column in the low half), or (BLOCK_N, D)
    of one 32-bit weight each."""
    PER_WORD: tl.constexpr = 32 // w_ptr.dtype.element_ty.primitive_bitwidth
    _, layer, kind, index, _, _ = _item(g, QKV_N, D, INTER, HKV, V, LAYERS, SPLIT, BLOCK_N)
    _, rows, row_ok, part, _ = _tile_rows(kind, index, QKV_N, D, INTER, V, BLOCK_N)
    starts = _row_starts(kind, layer, rows, part, D, INTER, L_QKV, L_OUT, L_GU, L_DOWN, L_STRIDE)
    starts = tl.multiple_of(starts // PER_WORD, 8)
    words = w_ptr.to(tl.pointer_type(tl.int32))
    wanted = (row_ok & _is_projection(kind, g, num_items)) != 0  # a bool mask under the interpreter too
    return tl.load(words + starts[:, None] + tl.arange(0, D // PER_WORD)[None, :], mask=wanted[:, None], other=0)


@triton.jit
def _words_dot(words, x, D: tl.constexpr):
    """Each row's sum of weight * x over a tile of `_projection_words` (16-bit weights: bf16, the
    even and odd columns summed apart)."""
    if words.shape[1] == D:  # one fp32 weight a word
        total = tl.sum(words.to(tl.float32, bitcast=True) * x[None, :], axis=1)
    else:
        even, odd = tl.split(tl.reshape(x, (D // 2, 2)))
        low = (words << 16).to(tl.float32, bitcast=True)
        high = (words & -65536).to(tl.float32, bitcast=True)
        total = tl.sum(low * even[None, :] + high * odd[None, :], axis=1)
    return total


@triton.jit
def _tile_rows(kind, index, QKV_N: tl.constexpr, D: tl.constexpr, INTER: tl.constexpr, V: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """A weight item's output columns, the weight rows it reads (the head's: its columns), which of
    them exist, its input part (down: the activation's part; else 0) and its tile of the output."""
    T_OUT: tl.constexpr = (D + BLOCK_N - 1) // BLOCK_N
    lane = tl.arange(0, BLOCK_N)
    tile = tl.where(kind == DOWN, index % T_OUT, index)
    part = tl.where(kind == DOWN, index // T_OUT, 0)
    if kind == GATE_UP:  # gate and up rows alternate, so a tile's sums pair up column by column
        cols = tile * (BLOCK_N // 2) + lane // 2
        rows = (lane % 2) * INTER + cols
        row_ok = cols < INTER
    else:
        cols = tile * BLOCK_N + lane
        rows = cols
        row_ok = cols < tl.where(kind == QKV, QKV_N, tl.where(kind == HEAD, V, D))
    return cols, rows, row_ok, part, tile


@triton.jit
def _row_starts(kind, layer, rows, part, D: tl.constexpr, INTER: tl.constexpr, L_QKV: tl.constexpr,
                L_OUT: tl.constexpr, L_GU: tl.constexpr, L_DOWN: tl.constexpr, L_STRIDE: tl.constexpr):
    """Where each of a projection item's weight rows starts in the packed weights (elements; the
    down projection's rows from its input part on)."""
    base = layer * L_STRIDE + tl.where(
        kind == QKV, L_QKV, tl.where(kind == OUT, L_OUT, tl.where(kind == GATE_UP, L_GU, L_DOWN))
    )
    return base + rows * tl.where(kind == DOWN, INTER, D) + part * D


@triton.jit
def _input_row(act_ptr, part_ptr, w_ptr, acts, done_ptr, phase, prev, kind, layer, part, eps,
               D: tl.constexpr, SPLIT: tl.constexpr, LAYER0: tl.constexpr, A_ATT: tl.constexpr,
               A_H: tl.constexpr, A_ACT: tl.constexpr, ACT_LAYER: tl.constexpr, L_ANORM: tl.constexpr,
               L_FNORM: tl.constexpr, L_FINAL: tl.constexpr, L_STRIDE: tl.constexpr):
    """After the phase before has counted in, a weight item's input row (fp32) and its 1 / rms: the
    residual stream (QKV, head), the attention output (output projection), h (gate/up) or the
    activation's part (down), times the norm's weight where the phase norms (rounded as eager)."""
    dtype = act_ptr.dtype.element_ty
    ks = tl.arange(0, D)
    _wait(done_ptr, phase, prev)
    if (kind == QKV) | (kind == HEAD):
        x = _stream(act_ptr, part_ptr, layer, ks, ks < D, LAYER0, A_H, ACT_LAYER, D, SPLIT)
    else:
        src = tl.where(kind == OUT, A_ATT, tl.where(kind == GATE_UP, A_H, A_ACT + part * D))
        x = tl.load(acts + src + ks, cache_modifier=".cg").to(tl.float32)
    if (kind == QKV) | (kind == GATE_UP) | (kind == HEAD):  # RMSNorm: x * weight, 1 / rms on the sums
        norm = tl.where(kind == HEAD, L_FINAL, layer * L_STRIDE + tl.where(kind == QKV, L_ANORM, L_FNORM))
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
        x = (x * tl.load(w_ptr + norm + ks).to(tl.float32)).to(dtype).to(tl.float32)
    else:
        rstd = 1.0
    return x, rstd


@triton.jit
def _store_projection(acc, kind, step, layer, part, tile, cols, row_ok, acts, act_ptr, part_ptr, logits_ptr,
                      D: tl.constexpr, INTER: tl.constexpr, V: tl.constexpr, SPLIT: tl.constexpr,
                      LAYER0: tl.constexpr, A_H: tl.constexpr, A_ACT: tl.constexpr, ACT_LAYER: tl.constexpr,
                      BLOCK_N: tl.constexpr):
    """A weight item's sums `acc` stored where its phase writes: QKV, h (the output projection plus
    the residual stream), the activation (silu(gate) * up), the down projection's part, the logits."""
    dtype = act_ptr.dtype.element_ty
    if kind == QKV:
        tl.store(acts + cols, acc.to(dtype), mask=row_ok)
    elif kind == OUT:  # + the residual stream entering the layer
        r = _stream(act_ptr, part_ptr, layer, cols, row_ok, LAYER0, A_H, ACT_LAYER, D, SPLIT)
        tl.store(acts + A_H + cols, (r + acc.to(dtype).to(tl.float32)).to(dtype), mask=row_ok)
    elif kind == GATE_UP:  # silu(gate) * up, rounded as the eager ops round
        gate, up = tl.split(tl.reshape(acc, (BLOCK_N // 2, 2)))
        gate = gate.to(dtype).to(tl.float32)
        act = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32)
        out = (act * up.to(dtype).to(tl.float32)).to(dtype)
        out_cols = tile * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        tl.store(acts + A_ACT + out_cols, out, mask=out_cols < INTER)
    elif kind == DOWN:
        tl.store(part_ptr + (layer * SPLIT + part) * D + cols, acc, mask=row_ok)
    else:
        tl.store(logits_ptr + step * V + cols, acc.to(dtype), mask=row_ok)


@triton.jit
def _head_tile(head_ptr, race_ptr, seed_ptr, frame_ptr, columns_ptr, step, cols, row_ok, D: tl.constexpr,
               V: tl.constexpr, VOCAB: tl.constexpr, FIRST: tl.constexpr, NUM_CODEBOOKS: tl.constexpr):
    """A head item's tile (BLOCK_N, D): its columns of the step's codebook head, which is (D, VOCAB)
    so a tile's rows are columns of it. The draw's noise of these columns is drawn and stored here:
    it needs no logit, so it is not the draw's time."""
    ks = tl.arange(0, D)
    w = tl.load(
        head_ptr + (FIRST - 1 + step) * D * VOCAB + ks[None, :] * VOCAB + cols[:, None],
        mask=row_ok[:, None], other=0.0,
    )
    noise = race_noise(tl.load(seed_ptr), tl.load(frame_ptr), FIRST + step, columns_ptr, cols, row_ok, NUM_CODEBOOKS)
    tl.store(race_ptr + step * V + cols, noise, mask=row_ok)
    return w


@triton.jit
def _finish_item(acc, kind, step, layer, part, tile, cols, row_ok, acts, act_ptr, part_ptr, logits_ptr, done_ptr,
                 trace_ptr, phase, pending, after, num_items, QKV_N: tl.constexpr, D: tl.constexpr,
                 INTER: tl.constexpr, HKV: tl.constexpr, V: tl.constexpr, LAYERS: tl.constexpr, SPLIT: tl.constexpr,
                 LAYER0: tl.constexpr, A_H: tl.constexpr, A_ACT: tl.constexpr, ACT_LAYER: tl.constexpr,
                 BLOCK_N: tl.constexpr, TRACE: tl.constexpr):
    """A weight item's sums stored, then counted in with the program's other items of its phase
    when the program's next item (`after`) is of another phase: the items not yet counted in."""
    _store_projection(acc, kind, step, layer, part, tile, cols, row_ok, acts, act_ptr, part_ptr, logits_ptr,
                      D, INTER, V, SPLIT, LAYER0, A_H, A_ACT, ACT_LAYER, BLOCK_N)
    pending += 1
    next_phase = _item(after, QKV_N, D, INTER, HKV, V, LAYERS, SPLIT, BLOCK_N)[4]
    if (next_phase != phase) | (after >= num_items):
        _count_in(done_ptr, phase, pending, trace_ptr, TRACE)
        pending = 0
    return pending


@triton.jit
def _tile_item(w, x, rstd, pending, key, held, act_ptr, part_ptr, w_ptr, acts, done_ptr, phase, prev, kind, step,
               layer, part, tile, cols, row_ok, logits_ptr, trace_ptr, after, num_items, eps, QKV_N: tl.constexpr,
               D: tl.constexpr, INTER: tl.constexpr, HKV: tl.constexpr, V: tl.constexpr, LAYERS: tl.constexpr,
               SPLIT: tl.constexpr, LAYER0: tl.constexpr, A_ATT: tl.constexpr, A_H: tl.constexpr,
               A_ACT: tl.constexpr, ACT_LAYER: tl.constexpr, L_ANORM: tl.constexpr, L_FNORM: tl.constexpr,
               L_FINAL: tl.constexpr, L_STRIDE: tl.constexpr, BLOCK_N: tl.constexpr, TRACE: tl.constexpr):
    """A weight item over its tile `w` (BLOCK_N, D): the input row read where the program does not
    hold it yet, the sums stored and counted in (`_finish_item`): (x, rstd, pending) after it."""
    if key != held:
        x, rstd = _input_row(act_ptr, part_ptr, w_ptr, acts, done_ptr, phase, prev, kind, layer, part,
                             eps, D, SPLIT, LAYER0, A_ATT, A_H, A_ACT, ACT_LAYER, L_ANORM, L_FNORM,
                             L_FINAL, L_STRIDE)
    acc = tl.sum(w.to(tl.float32) * x[None, :], axis=1) * rstd
    pending = _finish_item(
        acc, kind, step, layer, part, tile, cols, row_ok, acts, act_ptr, part_ptr, logits_ptr, done_ptr,
        trace_ptr, phase, pending, after, num_items, QKV_N, D, INTER, HKV, V, LAYERS, SPLIT, LAYER0,
        A_H, A_ACT, ACT_LAYER, BLOCK_N, TRACE,
    )
    return x, rstd, pending


@triton.jit
def _held(words):
    """`words` copied into registers of their own, here: the tile carried in is moved out of the
    registers the loop carries it in before the next tile is requested into them."""
    if _INTERPRETED:  # the interpreter runs no PTX, and has no registers to place
        held = words
    else:
        held = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [words], dtype=tl.int32, is_pure=False, pack=1)
    return held


@triton.jit
def _wait(done_ptr, phase, prev):
    """Until the phase before `phase` has counted in all `prev` of its items."""
    if phase > 0:
        if _ACQUIRING_READS:  # the read that sees the count orders the input's reads after the producers'
            while _acquiring_read(done_ptr + phase - 1) < prev:
                pass
        else:
            # Polled with plain reads (waiting programs would queue their atomics on one address in
            # L2), then one acquiring read-modify-write orders the input's reads after the producers'.
            while tl.load(done_ptr + phase - 1, volatile=True) < prev:
                pass
            tl.atomic_add(done_ptr + phase - 1, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _acquiring_read(ptr):
    """The int32 at `ptr`, read with acquire semantics at GPU scope (`ld.acquire.gpu`): no later
    read of this thread is performed before it."""
    return tl.inline_asm_elementwise(
        "ld.acquire.gpu.global.b32 $0, [$1];", "=r,l", [ptr], dtype=tl.int32, is_pure=False, pack=1
    )


@triton.jit
def _now():
    """The GPU's global nanosecond clock."""
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _count_in(done_ptr, phase, items, trace_ptr, TRACE: tl.constexpr):
    """`items` of this program's items of `phase` are stored: count them in (with TRACE, the time
    too: each phase's slot ends up holding when its last item finished)."""
    tl.debug_barrier()  # every thread's stores are issued before the release below
    tl.atomic_add(done_ptr + phase, items, sem="release", scope="gpu")
    if TRACE:
        tl.atomic_max(trace_ptr + 1 + phase, _now(), sem="relaxed")


@triton.jit
def _stream(act_ptr, part_ptr, layer, cols, mask, LAYER0: tl.constexpr, A_H: tl.constexpr,
            ACT_LAYER: tl.constexpr, D: tl.constexpr, SPLIT: tl.constexpr):
    """The residual stream entering `layer` (LAYERS: the final norm's input) at `cols`, fp32 of
    its bf16 values: the step's input row (at the workspace's start) for layer 0, else the layer
    before's attention-added row h plus its down projection (the parts summed in order and
    rounded, then added and rounded, as the fused down projection's residual epilogue does)."""
    prev = tl.maximum(layer - 1, 0)
    h = tl.load(act_ptr + LAYER0 + prev * ACT_LAYER + A_H + cols, mask=mask, other=0.0, cache_modifier=".cg")
    h = h.to(tl.float32)
    total = tl.zeros_like(h)
    for s in tl.static_range(SPLIT):
        total += tl.load(part_ptr + (prev * SPLIT + s) * D + cols, mask=mask, other=0.0, cache_modifier=".cg")
    dtype = act_ptr.dtype.element_ty
    added = (h + total.to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    first = tl.load(act_ptr + cols, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
    return tl.where(layer == 0, first, added)


@triton.jit
def _depth_loop_kernel(
    w_ptr,  # the flat layer weights and norms (`Layout`)
    head_ptr,  # bf16 (codebooks - 1, D, VOCAB): the codebook heads
    act_ptr,  # bf16 workspace (`workspace_size`): the step's input row, then per layer qkv, attention, h, activation
    part_ptr,  # fp32 (LAYERS, SPLIT, D): the down projections' parts
    logits_ptr,  # bf16 (STEPS, V): each step's logits
    race_ptr,  # fp32 (STEPS, V): each step's race noise, drawn by the head's items before their wait
    codes_ptr,  # int64 (STEPS,)
    table_ptr,  # bf16 (codebooks * VOCAB, D): the projected input embeddings
    temperature_ptr,  # fp32 (1,)
    top_k_ptr,  # int64 (1,)
    seed_ptr,  # int64 (1,)
    frame_ptr,  # int64 (1,)
    columns_ptr,  # int64 (V,): the draw's column keys
    positions_ptr,  # int64: depth position p at p
    cos_ptr,  # fp32 (P, HEAD_D)
    sin_ptr,
    k_cache_ptr,  # (LAYERS, S, HKV, P, HEAD_D); slot 0 is the row's
    v_cache_ptr,
    done_ptr,  # int32 (STEPS * PHASES,): items counted in, zero between launches
    ticket_ptr,  # TICKETS: int32 (1,), the next item to hand out, zeroed before each launch
    trace_ptr,  # TRACE: int64 (1 + STEPS * PHASES,): the launch's start, then each phase's end (ns)
    cache_layer_stride,
    cache_s_stride,
    cache_h_stride,
    cache_p_stride,
    scale,
    eps,
    D: tl.constexpr,
    H: tl.constexpr,
    HKV: tl.constexpr,
    GROUP: tl.constexpr,
    GP: tl.constexpr,
    HEAD_D: tl.constexpr,
    KEYS_BLOCK: tl.constexpr,
    PRECISION: tl.constexpr,
    INTER: tl.constexpr,
    LAYERS: tl.constexpr,
    VOCAB: tl.constexpr,
    V: tl.constexpr,
    VP: tl.constexpr,
    FAST: tl.constexpr,
    STEPS: tl.constexpr,
    FIRST: tl.constexpr,
    NUM_CODEBOOKS: tl.constexpr,
    L_QKV: tl.constexpr,
    L_OUT: tl.constexpr,
    L_GU: tl.constexpr,
    L_DOWN: tl.constexpr,
    L_ANORM: tl.constexpr,
    L_FNORM: tl.constexpr,
    L_STRIDE: tl.constexpr,
    L_FINAL: tl.constexpr,
    LAYER0: tl.constexpr,
    A_ATT: tl.constexpr,
    A_H: tl.constexpr,
    A_ACT: tl.constexpr,
    ACT_LAYER: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TRACE: tl.constexpr,
    KEYS_AHEAD: tl.constexpr,  # KEYS_BEFORE_WAIT where it runs (`DepthLoop.run`)
    TICKETS: tl.constexpr,  # items handed out by `ticket_ptr`, else program p takes p, p + P, ...
    SAME_ITEMS: tl.constexpr,  # SAME_ITEMS_EACH_STEP: ... of each step's items
    BY_BITS: tl.constexpr,  # DRAW_KTH_BY_BITS
    NEXT_TILE_AHEAD: tl.constexpr,
):
    QKV_N: tl.constexpr = (H + 2 * HKV) * HEAD_D
    SPLIT: tl.constexpr = INTER // D
    PHASES: tl.constexpr = 5 * LAYERS + 2
    T_OUT: tl.constexpr = (D + BLOCK_N - 1) // BLOCK_N
    T_LAYER: tl.constexpr = (QKV_N + BLOCK_N - 1) // BLOCK_N + HKV + T_OUT + 2 * INTER // BLOCK_N + T_OUT * SPLIT
    T_STEP: tl.constexpr = LAYERS * T_LAYER + (V + BLOCK_N - 1) // BLOCK_N + 1
    programs = tl.num_programs(0)
    num_items = STEPS * T_STEP
    ks = tl.arange(0, D)
    held = -1  # the (phase, input part) whose input row x holds
    x = tl.zeros([D], dtype=tl.float32)  # the input row, times the norm's weight where the phase norms
    rstd = 1.0
    pending = 0  # this program's items of the current phase not yet counted in
    if TRACE:  # noqa: SIM102 - a constexpr branch: the trace's code is compiled only with it
        if tl.program_id(0) == 0:
            tl.store(trace_ptr, _now())
    if TICKETS:
        g = tl.atomic_add(ticket_ptr, 1, sem="relaxed", scope="gpu")
    elif SAME_ITEMS:  # a program past a step's items has none
        g = tl.where(tl.program_id(0) < T_STEP, tl.program_id(0), num_items)
    else:
        g = tl.program_id(0)
    if NEXT_TILE_AHEAD:  # the tile the program's item before requested for its next item, and that item
        ahead = tl.zeros([BLOCK_N, D // (32 // w_ptr.dtype.element_ty.primitive_bitwidth)], dtype=tl.int32)
        ahead_for = -1
    while g < num_items:
        # The next item, known ahead: whether this one's count-in can wait to share the next one's.
        if TICKETS:
            after = tl.atomic_add(ticket_ptr, 1, sem="relaxed", scope="gpu")
        elif SAME_ITEMS:  # the step's next item of this program's, else the next step's first
            within = g % T_STEP
            after = tl.where(within + programs < T_STEP, g + programs, g - within + T_STEP + tl.program_id(0))
        else:
            after = g + programs
        step, layer, kind, index, phase, prev = _item(g, QKV_N, D, INTER, HKV, V, LAYERS, SPLIT, BLOCK_N)
        acts = act_ptr + LAYER0 + tl.minimum(layer, LAYERS - 1) * ACT_LAYER  # the layer's slots
        if kind == ATTEND:
            k_layer = k_cache_ptr + layer * cache_layer_stride
            v_layer = v_cache_ptr + layer * cache_layer_stride
            if KEYS_AHEAD:  # the older keys are final: every program waited on this layer's step before
                pos = FIRST + step
                head = index * cache_h_stride  # slot 0's
                c, s = rope_at(cos_ptr, sin_ptr, pos, HEAD_D)
                kb1, kb2 = cached_rows(k_layer, head, pos, cache_p_stride, HEAD_D, KEYS_BLOCK)
                vb1, vb2 = cached_rows(v_layer, head, pos, cache_p_stride, HEAD_D, KEYS_BLOCK)
                _wait(done_ptr, phase, prev)
                attend_new_row(
                    acts, index, pos, c, s, kb1, kb2, vb1, vb2, k_layer, v_layer, head, acts + A_ATT,
                    cache_p_stride, scale, H, HKV, GROUP, GP, HEAD_D, KEYS_BLOCK, PRECISION,
                )
            else:
                _wait(done_ptr, phase, prev)
                attend_row(
                    acts, 0, index, 0, positions_ptr + FIRST + step, cos_ptr, sin_ptr, k_layer, v_layer,
                    acts + A_ATT, 0, 0, cache_s_stride, cache_h_stride, cache_p_stride, scale,
                    H, HKV, GROUP, GP, HEAD_D, KEYS_BLOCK, PRECISION, True, True,
                )
            _count_in(done_ptr, phase, 1, trace_ptr, TRACE)
        elif kind == DRAW:
            _wait(done_ptr, phase, prev)
            codebook = FIRST + step
            idx = tl.arange(0, VP)
            race = tl.load(race_ptr + step * V + idx, mask=idx < V, other=1.0, cache_modifier=".cg")
            drawn = draw_row(
                logits_ptr + step * V, tl.load(temperature_ptr), tl.load(top_k_ptr), race, V, VP, FAST, BY_BITS
            )
            tl.store(codes_ptr + step, drawn)
            if step + 1 < STEPS:  # the next step's input: codebook `codebook`'s row of the table
                tl.store(act_ptr + ks, tl.load(table_ptr + (codebook * VOCAB + drawn) * D + ks))
                _count_in(done_ptr, phase, 1, trace_ptr, TRACE)
            else:  # the launch's last item: every other has counted in; zero the counters
                if TRACE:
                    tl.store(trace_ptr + 1 + phase, _now())
                tl.debug_barrier()
                for p in range(STEPS * PHASES):
                    tl.store(done_ptr + p, 0)
        else:
            cols, rows, row_ok, part, tile = _tile_rows(kind, index, QKV_N, D, INTER, V, BLOCK_N)
            key = phase * SPLIT + part
            # The weight tile first: no phase writes weights, so it streams while this item waits
            # (NEXT_TILE_AHEAD: a projection's was requested by the item before, and the next
            # projection item's is requested once this one's wait is over: requested before it, a
            # tile more a program in flight through the waits slowed the attention, head and draw)
            if NEXT_TILE_AHEAD:
                if kind == HEAD:
                    w = _head_tile(head_ptr, race_ptr, seed_ptr, frame_ptr, columns_ptr, step, cols, row_ok,
                                   D, V, VOCAB, FIRST, NUM_CODEBOOKS)
                    x, rstd, pending = _tile_item(
                        w, x, rstd, pending, key, held, act_ptr, part_ptr, w_ptr, acts, done_ptr, phase, prev, kind,
                        step, layer, part, tile, cols, row_ok, logits_ptr, trace_ptr, after, num_items, eps, QKV_N, D,
                        INTER, HKV, V, LAYERS, SPLIT, LAYER0, A_ATT, A_H, A_ACT, ACT_LAYER, L_ANORM, L_FNORM, L_FINAL,
                        L_STRIDE, BLOCK_N, TRACE,
                    )
                else:
                    if ahead_for != g:  # not requested by the item before: requested now, before the wait
                        ahead = _projection_words(
                            w_ptr, g, num_items, QKV_N, D, INTER, HKV, V, LAYERS, SPLIT, L_QKV, L_OUT, L_GU, L_DOWN,
                            L_STRIDE, BLOCK_N,
                        )
                    words = _held(ahead)
                    if key != held:
                        x, rstd = _input_row(act_ptr, part_ptr, w_ptr, acts, done_ptr, phase, prev, kind, layer, part,
                                             eps, D, SPLIT, LAYER0, A_ATT, A_H, A_ACT, ACT_LAYER, L_ANORM, L_FNORM,
                                             L_FINAL, L_STRIDE)
                    # the next item's tile where it is of this phase
                    same = (_item(after, QKV_N, D, INTER, HKV, V, LAYERS, SPLIT, BLOCK_N)[4] == phase) & (after < num_items)
                    ahead_for = tl.where(same, after, -1)
                    ahead = _projection_words(
                        w_ptr, tl.where(same, after, num_items), num_items, QKV_N, D, INTER, HKV, V, LAYERS, SPLIT,
                        L_QKV, L_OUT, L_GU, L_DOWN, L_STRIDE, BLOCK_N,
                    )
                    acc = _words_dot(words, x, D) * rstd
                    # stored and counted in before this branch ends, where the next tile is
                    # moved into the registers the loop carries it in (which waits for it)
                    pending = _finish_item(
                        acc, kind, step, layer, part, tile, cols, row_ok, acts, act_ptr, part_ptr, logits_ptr, done_ptr,
                        trace_ptr, phase, pending, after, num_items, QKV_N, D, INTER, HKV, V, LAYERS, SPLIT, LAYER0,
                        A_H, A_ACT, ACT_LAYER, BLOCK_N, TRACE,
                    )
            else:
                if kind == HEAD:
                    w = _head_tile(head_ptr, race_ptr, seed_ptr, frame_ptr, columns_ptr, step, cols, row_ok,
                                   D, V, VOCAB, FIRST, NUM_CODEBOOKS)
                else:
                    starts = _row_starts(kind, layer, rows, part, D, INTER, L_QKV, L_OUT, L_GU, L_DOWN, L_STRIDE)
                    starts = tl.multiple_of(starts, 16)
                    w = tl.load(w_ptr + starts[:, None] + ks[None, :], mask=row_ok[:, None], other=0.0)
                x, rstd, pending = _tile_item(
                    w, x, rstd, pending, key, held, act_ptr, part_ptr, w_ptr, acts, done_ptr, phase, prev, kind,
                    step, layer, part, tile, cols, row_ok, logits_ptr, trace_ptr, after, num_items, eps, QKV_N, D,
                    INTER, HKV, V, LAYERS, SPLIT, LAYER0, A_ATT, A_H, A_ACT, ACT_LAYER, L_ANORM, L_FNORM, L_FINAL,
                    L_STRIDE, BLOCK_N, TRACE,
                )
            held = key
        g = after


# ---- the host side -----------------------------------------------------------------------------
class DepthLoop:
    """The kernel's buffers and launch for one model's decoder (batch 1, cache slot 0).

    Made before any CUDA-graph capture (it allocates its counters, zero between launches, and
    packs the decoder's weights into one buffer); `run` may then be captured."""

    def __init__(self, decoder: torch.nn.Module, head: torch.Tensor, table: torch.Tensor, columns: torch.Tensor) -> None:
        """`head` (codebooks - 1, D, vocab) the codebook heads; `table` (codebooks * vocab, D) the
        projected input embeddings; `columns` the draw's column keys (its length: the vocabulary
        drawn from)."""
        vocab = head.shape[-1]
        self.geo = geometry(decoder, vocab, columns.shape[0])
        if not supports(self.geo):
            raise ValueError(f"the depth loop kernel does not run this decoder: {self.geo}")
        self.decoder, self.head, self.table, self.columns = decoder, head, table, columns
        self.layout = Layout.of(self.geo)
        self.weights = pack_decoder(decoder, self.geo)
        device = head.device
        geo = self.geo
        self.steps = NUM_CODEBOOKS - FIRST_CODEBOOK
        self.slots = {
            "LAYER0": _pad(geo.dim),
            "A_ATT": _pad(geo.qkv_dim),
            "A_H": _pad(geo.qkv_dim) + _pad(geo.dim),
            "A_ACT": _pad(geo.qkv_dim) + 2 * _pad(geo.dim),
        }
        self.slots["ACT_LAYER"] = self.slots["A_ACT"] + _pad(geo.inter)
        acts = self.slots["LAYER0"] + geo.layers * self.slots["ACT_LAYER"]
        self.acts = torch.zeros(acts, dtype=head.dtype, device=device)
        self.parts = torch.zeros(geo.layers, geo.split, geo.dim, dtype=torch.float32, device=device)
        self.logits = torch.zeros(self.steps, geo.vocab_limit, dtype=head.dtype, device=device)
        self.race = torch.zeros(self.steps, geo.vocab_limit, dtype=torch.float32, device=device)
        self.done = torch.zeros(self.steps * (5 * geo.layers + 2), dtype=torch.int32, device=device)
        self.ticket = torch.zeros(1, dtype=torch.int32, device=device)
        self.positions = torch.arange(geo.positions, device=device)
        self.grids: dict[tuple[object, ...], int] = {}  # the settings (`run`'s key): their grid
        self.trace: torch.Tensor | None = None  # `trace_phases()`: each phase's end, from the launch's start
        self.keys_ahead = False  # whether the last launch ran `KEYS_BEFORE_WAIT`

    def run(
        self,
        inputs: torch.Tensor,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        seeds: torch.Tensor,
        frame: torch.Tensor,
    ) -> torch.Tensor:
        """Codebooks 2..31's ids (1, 30) of the frame whose first depth pass wrote positions 0 and
        1 of cache slot 0 and drew codebook 1, whose input row for codebook 2 is `inputs` (1, D)."""
        k_all = self.decoder.caches[0]
        if k_all.data_ptr() != self.decoder.layers[0].attention.cache().k.data_ptr():
            raise RuntimeError("the decoder's layer caches are not views of its stacked caches")
        self.acts[: self.geo.dim].copy_(inputs[0])
        codes = torch.empty(self.steps, dtype=torch.long, device=inputs.device)
        args = self._arguments(codes, temperature, top_k, seeds, frame)
        kwargs = self._constants()
        cuda = inputs.device.type == "cuda" and not INTERPRETED
        programs = torch.cuda.get_device_properties(inputs.device).multi_processor_count * RESIDENT if cuda else 1
        programs -= SPARE_PROGRAMS if cuda else 0
        # The older keys are final when an attention item is reached if every program has a gate/up
        # item in every layer (each waits on the layer before, after the last step's attention): so
        # with items handed out by program number, not by ticket.
        kwargs["KEYS_AHEAD"] = (
            KEYS_BEFORE_WAIT
            and not TICKETS
            and 2 * self.geo.inter // BLOCK_N >= programs
            and NUM_CODEBOOKS - 1 < kwargs["KEYS_BLOCK"]
        )
        self.keys_ahead = bool(kwargs["KEYS_AHEAD"])
        key = self._setting(self.trace is not None)
        if key not in self.grids:  # by ticket, programs need not all be resident at once
            resident = TICKETS or not cuda
            self.grids[key] = programs if resident else _resident_grid(args, kwargs, inputs.device, programs)
        if self.trace is not None:
            self.trace.zero_()
        if TICKETS:
            self.ticket.zero_()
        _depth_loop_kernel[(self.grids[key],)](*args, **kwargs)
        return codes.unsqueeze(0)

    @staticmethod
    def _setting(traced: bool) -> tuple[object, ...]:
        """The module's settings a launch's grid depends on."""
        return (
            RESIDENT, NUM_WARPS, MAX_REGISTERS, SPARE_PROGRAMS, traced, KEYS_BEFORE_WAIT, TICKETS,
            SAME_ITEMS_EACH_STEP, DRAW_KTH_BY_BITS, NEXT_TILE_AHEAD,
        )

    def _arguments(
        self,
        codes: torch.Tensor,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        seeds: torch.Tensor,
        frame: torch.Tensor,
    ) -> tuple[object, ...]:
        """The kernel's runtime arguments, in its order."""
        k_all, v_all = self.decoder.caches
        trace = self.done if self.trace is None else self.trace
        return (
            self.weights, self.head, self.acts, self.parts, self.logits, self.race, codes, self.table,
            temperature, top_k, seeds, frame, self.columns, self.positions,
            self.decoder.rope_cos, self.decoder.rope_sin, k_all, v_all, self.done, self.ticket, trace,
            k_all.stride(0), k_all.stride(1), k_all.stride(2), k_all.stride(3),
            1.0 / math.sqrt(self.geo.head_dim), self.decoder.norm.eps,
        )

    def _constants(self) -> dict[str, object]:
        """The kernel's constexprs and launch options under the module's settings (KEYS_AHEAD aside)."""
        geo, layout = self.geo, self.layout
        attention = kernel_constants(geo.n_heads, geo.n_kv_heads, geo.head_dim, self.decoder.caches[0].dtype)
        constants: dict[str, object] = {
            "D": geo.dim, "H": geo.n_heads, "HKV": geo.n_kv_heads, "GROUP": attention["GROUP"],
            "GP": attention["GP"], "HEAD_D": geo.head_dim, "KEYS_BLOCK": attention["BLOCK_N"],
            "PRECISION": attention["PRECISION"], "INTER": geo.inter, "LAYERS": geo.layers, "VOCAB": geo.vocab,
            "V": geo.vocab_limit, "VP": triton.next_power_of_2(geo.vocab_limit),
            "FAST": min(TOP_K_FAST, triton.next_power_of_2(geo.vocab_limit)), "STEPS": self.steps,
            "FIRST": FIRST_CODEBOOK, "NUM_CODEBOOKS": NUM_CODEBOOKS,
            "L_QKV": layout.qkv, "L_OUT": layout.out, "L_GU": layout.gate_up, "L_DOWN": layout.down,
            "L_ANORM": layout.attention_norm, "L_FNORM": layout.ffn_norm, "L_STRIDE": layout.layer,
            "L_FINAL": layout.final_norm, **self.slots, "BLOCK_N": BLOCK_N, "TRACE": self.trace is not None,
            "TICKETS": TICKETS, "SAME_ITEMS": SAME_ITEMS_EACH_STEP,
            "BY_BITS": DRAW_KTH_BY_BITS, "NEXT_TILE_AHEAD": NEXT_TILE_AHEAD, "num_warps": NUM_WARPS,
        }
        if MAX_REGISTERS:
            constants["maxnreg"] = MAX_REGISTERS
        return constants

    @property
    def grid(self) -> int:
        """The current setting's programs (0 before its first launch)."""
        return self.grids.get(self._setting(False), 0)

    @property
    def phases(self) -> int:
        return 5 * self.geo.layers + 2

    def trace_phases(self, on: bool = True) -> None:
        """Record when each phase's last item finishes (the GPU's clock) in later launches: a
        profile of the chain, not the service's setting (the clock reads and atomics cost time)."""
        self.trace = torch.zeros(1 + self.steps * self.phases, dtype=torch.long, device=self.acts.device) if on else None

    def phase_ns(self) -> torch.Tensor:
        """The last traced launch's phases' durations (steps, phases), ns: each from the end of the
        phase before (the first from the launch's first program's start)."""
        assert self.trace is not None, "trace_phases() first"
        return self.trace.diff().view(self.steps, self.phases)


def _resident_grid(args: tuple, kwargs: dict, device: torch.device, programs: int) -> int:  # type: ignore[type-arg]
    """`programs` (`RESIDENT` an SM, less `SPARE_PROGRAMS`), refused where more than the compiled
    kernel's registers and shared memory let be resident at once: a program not yet placed would leave
    the others waiting on its items for ever."""
    compiled = _depth_loop_kernel.warmup(*args, grid=(1,), **kwargs)
    compiled._init_handles()
    props = torch.cuda.get_device_properties(device)
    threads = 32 * NUM_WARPS
    fits = min(
        getattr(props, "regs_per_multiprocessor", 65536) // max(1, compiled.n_regs * threads),
        getattr(props, "max_threads_per_multi_processor", 2048) // threads,
        getattr(props, "shared_memory_per_multiprocessor", 232_448) // max(1, compiled.metadata.shared),
    )
    if fits < RESIDENT:
        raise RuntimeError(
            f"{RESIDENT} depth-loop programs an SM do not fit ({fits} do: {compiled.n_regs} registers, "
            f"{compiled.metadata.shared} B shared)"
        )
    return programs


settle(globals())  # every key the same in every process (see `keys`)
