"""The sampler as one Triton kernel per codebook: temperature, top-k threshold, softmax and the
counter-based exponential race of `serve_app.model.sampling.sample_top_k` (the same ids), one program
per row.

`torch.topk` over the whole vocabulary (the k-th largest score is needed for any k) costs two sort
kernels of ~20 µs each per codebook at batch 128, 32 times a frame; an in-register bitonic sort of
the row does the same inside the one kernel that also draws the id.

In the depth loop the drawn id picks the next step's input, a row of a table of projected
embeddings; `sample_top_k_embed` copies that row in the same kernel, so a depth step launches no
gather (nor the offset add before it) between its sampler and its first projection.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from serve_app.constants import NUM_CODEBOOKS
from serve_app.model.kernels import pdl
from serve_app.model.kernels.keys import settle
from serve_app.model.kernels.pdl import enter
from serve_app.model.sampling import NOISE_BITS

_GOLDEN: tl.constexpr = tl.constexpr(0x9E3779B97F4A7C15 - (1 << 64))  # SplitMix64 constants, as int64
_MIX1: tl.constexpr = tl.constexpr(0xBF58476D1CE4E5B9 - (1 << 64))
_MIX2: tl.constexpr = tl.constexpr(0x94D049BB133111EB - (1 << 64))
_NOISE_SHIFT: tl.constexpr = tl.constexpr(64 - NOISE_BITS)  # the hash's top NOISE_BITS bits ...
_NOISE_MASK: tl.constexpr = tl.constexpr((1 << NOISE_BITS) - 1)
_NOISE_SCALE: tl.constexpr = tl.constexpr(1.0 / (1 << NOISE_BITS))  # ... and their uniform's step


NUM_WARPS = 16
"""Warps per row's program (the sort's lanes). Timed alone on an H200, 16 warps took 17.0 µs a call
at batch 1 where 8 took 23.1 (`benchmarks/results/2026-12-03-0728-nvidia-h200-fused-linear.json`);
in the whole graphed step, 7.30 vs 7.38 ms a frame at batch 1
(`benchmarks/results/2026-12-03-1006-nvidia-h200-fused-linear-cold.json`)."""


TOP_K_FAST = 64
"""Rows whose top_k is at most this (a power of two; 0: none) find their k-th score by a bitonic
top-k of this many (`tl.topk`: the full sort's first log2(TOP_K_FAST) merge stages, then halving
merges of the survivors) instead of sorting the whole row; larger top_k still sort it. Same ids
either way (the tests check both paths). On an H200 at 16 warps a call took 9.6 µs against the sort's
16.8 at batch 1 and 9.7 against 17.3 at 128; the graphed step 8.36 against 8.56 ms a frame at batch
128 and 6.79 against 6.98 at 16 (`benchmarks/results/2026-12-05-0139-nvidia-h200-kernel-variants.json`)."""


KTH_BY_BITS = False
"""Whether each row's k-th score is found bit by bit (`_kth_by_bits`, any k, a short loop) instead of
by the bitonic top-`TOP_K_FAST` or the sorted row (over bf16 logits, two bits a turn of their 16, as
the depth loop's draw finds it). The same ids. Not measured yet for this kernel
(`bench_fused_linear.py`'s sampler section times it by warps, its `sampler_bits` variant in the
step): off."""


@triton.jit
def _kth_by_bits(values, k, KEY_BITS: tl.constexpr):
    """The k-th largest of a row's values, over order-keeping 32-bit keys (a float's bits with the
    sign bit set where it is non-negative, all bits flipped where negative): from the top, two bits
    at a time, the digit kept is the largest with which at least k keys reach the threshold, so the
    threshold ends as the k-th key. A turn counts the row against all three nonzero digits in one
    sum (three 16-bit counts packed in an int64; rows shorter than 2**16), so it takes KEY_BITS / 2
    sums of the row, each a reduction across the program's warps, where a bit a turn took KEY_BITS.
    KEY_BITS 16 searches only the top half of the keys: exact for bf16 values widened to fp32,
    whose low 16 bits are zero (the key's low half then follows from its sign). Exact for any k,
    in a loop of a few instructions, where a bitonic network unrolls into thousands. In the depth
    loop's draw (bf16 logits, 8 sums where a bit a turn over the scores took 32) on one H100: 6.78 µs
    a depth step against 10.18 (`benchmarks/results/2026-12-07-1311-nvidia-h100-80gb-hbm3-depth-loop-kth.json`)."""
    bits = values.to(tl.uint32, bitcast=True)
    keys = tl.where((bits >> 31) == 0, bits | 0x80000000, bits ^ 0xFFFFFFFF) >> (32 - KEY_BITS)
    threshold = tl.full([], 0, tl.uint32)
    unit = tl.full([], 1 << (KEY_BITS - 2), tl.uint32)
    for _ in tl.range(0, KEY_BITS // 2, loop_unroll_factor=1):
        packed = (
            (keys >= threshold + unit).to(tl.int64)
            + ((keys >= threshold + 2 * unit).to(tl.int64) << 16)
            + ((keys >= threshold + 3 * unit).to(tl.int64) << 32)
        )
        counts = tl.sum(packed, axis=0)
        # The counts fall as the digit grows, so the digit is how many of them reach k.
        digit = (
            ((counts & 0xFFFF) >= k).to(tl.uint32)
            + (((counts >> 16) & 0xFFFF) >= k).to(tl.uint32)
            + ((counts >> 32) >= k).to(tl.uint32)
        )
        threshold = threshold + digit * unit
        unit = unit >> 2
    key = threshold << (32 - KEY_BITS)
    if KEY_BITS < 32:  # a widened bf16's low key bits: zeros where it is non-negative, ones where negative
        key = tl.where((key >> 31) == 1, key, key | ((1 << (32 - KEY_BITS)) - 1))
    kth_bits = tl.where((key >> 31) == 1, key & 0x7FFFFFFF, key ^ 0xFFFFFFFF)
    return kth_bits.to(tl.float32, bitcast=True)


@triton.jit
def _kth_largest(scores, idx, k, VP: tl.constexpr, FAST: tl.constexpr, BY_BITS: tl.constexpr):
    """The k-th largest of a row's scores (padding is -inf): bit by bit (BY_BITS), a bitonic
    top-FAST when k <= FAST, else the sorted row."""
    if BY_BITS:
        kth = _kth_by_bits(scores, k, 32)
    elif FAST > 0:
        if k <= FAST:
            top = tl.topk(scores, FAST)
            kth = tl.max(tl.where(tl.arange(0, FAST) == k - 1, top, float("-inf")), axis=0)
        else:
            ranked = tl.sort(scores, descending=True)
            kth = tl.max(tl.where(idx == k - 1, ranked, float("-inf")), axis=0)
    else:
        ranked = tl.sort(scores, descending=True)
        kth = tl.max(tl.where(idx == k - 1, ranked, float("-inf")), axis=0)
    return kth


@triton.jit
def _splitmix64(x):
    z = x + _GOLDEN
    z = (z ^ ((z >> 30) & 0x3FFFFFFFF)) * _MIX1
    z = (z ^ ((z >> 27) & 0x1FFFFFFFFF)) * _MIX2
    return z ^ ((z >> 31) & 0x1FFFFFFFF)


@triton.jit
def race_noise(seed, frame, codebook, columns_ptr, cols, valid, NUM_CODEBOOKS: tl.constexpr):
    """The exponential race's noise of columns `cols` in the draw with counter
    `frame * NUM_CODEBOOKS + codebook`: it depends on no logit, so it may be drawn before them."""
    counter = frame * NUM_CODEBOOKS + codebook
    key = _splitmix64(_splitmix64(seed) + counter)
    # The top NOISE_BITS bits of the hash: (bits + 0.5) / 2**NOISE_BITS is exact and strictly inside (0, 1).
    hashed = _splitmix64(key + tl.load(columns_ptr + cols, mask=valid, other=0))
    bits = (hashed >> _NOISE_SHIFT) & _NOISE_MASK
    return -tl.log((bits.to(tl.float32) + 0.5) * _NOISE_SCALE)


@triton.jit
def draw_row(row_ptr, temperature, top_k, race, V: tl.constexpr, VP: tl.constexpr, FAST: tl.constexpr,
             BY_BITS: tl.constexpr):
    """One row's id from its logits (>= V at `row_ptr`) and its race noise (VP,): the tempered
    top-k race of `sample_top_k` (greedy when k is 1); its k-th score as `_kth_largest` finds it,
    or, bit by bit over bf16 logits, the k-th logit (`_kth_by_bits` over their 16 bits): distinct
    bf16 values lie 2**16 fp32 steps apart, so no rounding of the division by the temperature
    merges or reorders them, and the logits at or above the k-th are the scores at or above the
    k-th score, the same ids."""
    tl.static_assert(VP < 65536, "the k-th search packs 16-bit counts of the row")
    idx = tl.arange(0, VP)
    valid = idx < V
    row = tl.load(row_ptr + idx, mask=valid, other=float("-inf"), cache_modifier=".cg")
    logits = row.to(tl.float32)
    scores = logits / temperature
    k = tl.minimum(tl.maximum(top_k, 1), V)
    if BY_BITS and row_ptr.dtype.element_ty == tl.bfloat16:
        ranked = logits  # the values the k-th is of
        kth = _kth_by_bits(logits, k, 16)
    else:
        ranked = scores
        kth = _kth_largest(scores, idx, k, VP, FAST, BY_BITS)
    kept = tl.where(ranked < kth, float("-inf"), scores)
    if k == 1:  # greedy: the softmax and the race are not needed
        drawn = tl.argmax(kept, axis=0)
    else:
        top = tl.max(kept, axis=0)
        e = tl.exp(kept - top)
        probs = e / tl.sum(e, axis=0)
        # Ids outside the top k (and past the vocabulary) are out of the race, whatever the noise.
        drawn = tl.argmax(tl.where(valid & (ranked >= kth), probs / race, -1.0), axis=0)
    return drawn.to(tl.int64)


@triton.jit
def _sample_kernel(
    logits_ptr,  # (B, >= V)
    logits_stride,
    temperature_ptr,  # (B,) fp32
    top_k_ptr,  # (B,) int64
    seeds_ptr,  # (B,) int64
    frame_ptr,  # (B,) int64
    columns_ptr,  # (V,) int64: column * golden
    out_ptr,  # (B,) int64
    table_ptr,  # (>= V, D) the next inputs' table, row id for id (EMBED)
    next_ptr,  # (B, D) the drawn ids' rows of the table (EMBED)
    codebook,
    NUM_CODEBOOKS: tl.constexpr,
    V: tl.constexpr,
    VP: tl.constexpr,
    FAST: tl.constexpr,
    BY_BITS: tl.constexpr,
    EMBED: tl.constexpr,
    D: tl.constexpr,
    PDL_WAIT: tl.constexpr,
    PDL_EARLY: tl.constexpr,
):
    enter(PDL_WAIT, PDL_EARLY)
    b = tl.program_id(0)
    idx = tl.arange(0, VP)
    race = race_noise(
        tl.load(seeds_ptr + b), tl.load(frame_ptr + b), codebook, columns_ptr, idx, idx < V, NUM_CODEBOOKS
    )
    drawn = draw_row(
        logits_ptr + b * logits_stride, tl.load(temperature_ptr + b), tl.load(top_k_ptr + b), race, V, VP, FAST,
        BY_BITS,
    )
    tl.store(out_ptr + b, drawn)
    if EMBED:
        dims = tl.arange(0, D)
        tl.store(next_ptr + b * D + dims, tl.load(table_ptr + drawn * D + dims))


def launch(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    seeds: torch.Tensor,
    frame: torch.Tensor,
    codebook: int,
    columns: torch.Tensor,
    table: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The drawn ids (B,), and with `table` (rows, D) their rows `table[id]` (B, D)."""
    b, v = logits.shape[0], columns.shape[0]
    if TOP_K_FAST & (TOP_K_FAST - 1):
        raise ValueError(f"TOP_K_FAST must be 0 or a power of two, got {TOP_K_FAST}")
    if table is not None and (not table.is_contiguous() or table.shape[1] & (table.shape[1] - 1)):
        raise ValueError("the table must be contiguous and its rows a power of two wide")
    out = torch.empty(b, dtype=torch.long, device=logits.device)
    rows = None if table is None else table.new_empty(b, table.shape[1])
    if b:
        _sample_kernel[(b,)](
            logits,
            logits.stride(0),
            temperature,
            top_k,
            seeds,
            frame,
            columns,
            out,
            out if table is None else table,
            out if rows is None else rows,
            codebook,
            NUM_CODEBOOKS=NUM_CODEBOOKS,
            V=v,
            VP=triton.next_power_of_2(v),
            FAST=min(TOP_K_FAST, triton.next_power_of_2(v)),
            BY_BITS=KTH_BY_BITS,
            EMBED=table is not None,
            D=1 if table is None else table.shape[1],
            num_warps=NUM_WARPS,
            **pdl.launch_options(logits.device),
        )
    return out, rows


@torch.library.custom_op("csm_serve::sample_top_k", mutates_args=())
def sample_top_k(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    seeds: torch.Tensor,
    frame: torch.Tensor,
    codebook: int,
    columns: torch.Tensor,
) -> torch.Tensor:
    """Ids (B,) long drawn as `serve_app.model.sampling.sample_top_k` draws them, with the draw
    counter `draw_counter(frame, codebook)`; only the first `len(columns)` logits are candidates."""
    return launch(logits, temperature, top_k, seeds, frame, codebook, columns)[0]


@sample_top_k.register_fake
def _(logits, temperature, top_k, seeds, frame, codebook, columns):  # type: ignore[no-untyped-def]
    return logits.new_empty(logits.shape[0], dtype=torch.long)


@torch.library.custom_op("csm_serve::sample_top_k_embed", mutates_args=())
def sample_top_k_embed(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    seeds: torch.Tensor,
    frame: torch.Tensor,
    codebook: int,
    columns: torch.Tensor,
    table: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_top_k`'s ids, and their rows `table[id]` (B, D): the next depth step's inputs,
    copied by the kernel that drew them."""
    ids, rows = launch(logits, temperature, top_k, seeds, frame, codebook, columns, table)
    assert rows is not None
    return ids, rows


@sample_top_k_embed.register_fake
def _(logits, temperature, top_k, seeds, frame, codebook, columns, table):  # type: ignore[no-untyped-def]
    return logits.new_empty(logits.shape[0], dtype=torch.long), table.new_empty(logits.shape[0], table.shape[1])


settle(globals())  # every key the same in every process (see `keys`)
