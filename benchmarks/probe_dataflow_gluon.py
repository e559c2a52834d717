"""The dataflow probe's persistent arm with several weight tiles in flight (Gluon, Hopper and newer).

`probe_dataflow_step.py`'s persistent Triton kernel keeps one tile in flight a program: Triton does
not pipeline a loop that waits on other programs. Here the same resident programs take the same
items (`_item_scalars`, the same layout, counters and waits), but each keeps `BUFFERS - 1` items'
weight tiles in flight by bulk tensor copies (TMA) into a ring of shared-memory buffers, each tracked
by an mbarrier, while it waits for the current item's input: the weights stream ahead across the
waits. Gluon has no CPU interpreter, so this arm runs on the GPU only (`tests/test_probe_dataflow.py`
checks it there, phase by phase, against PyTorch).

A tile is 4-D, (BLOCK_N / 2, 2, BLOCK_K / 256, 256): pairs of weight rows (a gate/up column's gate and
up rows side by side, or two output columns), each row in chunks of 256 (a copy's box is at most 256
elements a dimension); one warp a chunk.
"""

from __future__ import annotations

from probe_dataflow_step import (
    Frame,
    Variant,
    _count_in,
    _geometry_args,
    _item_scalars,
    _wait,
    resident_programs,
)
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor


@gluon.jit
def _issue(w_desc, smem, bars, g, index, pred, D: gl.constexpr, Q: gl.constexpr, KV: gl.constexpr,
           INTER: gl.constexpr, V: gl.constexpr, LAYERS: gl.constexpr, SPLIT: gl.constexpr,
           BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, BUFFERS: gl.constexpr):
    """Start the copy of item g's weight tile into ring buffer `index % BUFFERS` (if pred)."""
    _, _, _, _, _, _, _, _, w_base, _, _, first_row, _ = _item_scalars(g, D, Q, KV, INTER, V, LAYERS, SPLIT, BLOCK_N)
    bar = bars.index(index % BUFFERS)
    mbarrier.expect(bar, w_desc.block_type.nbytes, pred=pred)
    pair = (w_base // BLOCK_K + first_row) // 2  # every weight starts on an even row of BLOCK_K
    tma.async_copy_global_to_shared(w_desc, [pair, 0, 0, 0], bar, smem.index(index % BUFFERS), pred=pred)


@gluon.jit
def _gluon_frame_kernel(
    w_desc,  # the weights as (rows / 2, 2, BLOCK_K / 256, 256), blocks of (BLOCK_N / 2, 2, BLOCK_K / 256, 256)
    act_ptr,
    ticket_ptr,
    done_ptr,
    num_items,
    num_phases,
    D: gl.constexpr,
    Q: gl.constexpr,
    KV: gl.constexpr,
    INTER: gl.constexpr,
    V: gl.constexpr,
    LAYERS: gl.constexpr,
    SPLIT: gl.constexpr,
    ACT_SLOT: gl.constexpr,
    SLEEP_NS: gl.constexpr,
    BLOCK_N: gl.constexpr,
    BLOCK_K: gl.constexpr,  # every item's whole K
    BUFFERS: gl.constexpr,  # the ring: BUFFERS - 1 tiles in flight ahead of the one in use
):
    CH: gl.constexpr = BLOCK_K // 256
    HALF: gl.constexpr = BLOCK_N // 2
    tile_layout: gl.constexpr = gl.BlockedLayout([1, 1, 1, 8], [1, 1, 1, 32], [1, 1, CH, 1], [3, 2, 1, 0])
    x_layout: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(1, tile_layout))  # (CH, 256)
    out_layout: gl.constexpr = gl.SliceLayout(2, gl.SliceLayout(3, tile_layout))  # (HALF, 2)
    smem = gl.allocate_shared_memory(gl.bfloat16, [BUFFERS, HALF, 2, CH, 256], w_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [BUFFERS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(BUFFERS):
        mbarrier.init(bars.index(i), count=1)

    pid = gl.program_id(0)
    programs = gl.num_programs(0)
    count = (num_items - pid + programs - 1) // programs  # this program's items: pid, pid + P, ...
    for i in gl.static_range(BUFFERS - 1):
        _issue(w_desc, smem, bars, pid + i * programs, i, i < count, D, Q, KV, INTER, V, LAYERS, SPLIT,
               BLOCK_N, BLOCK_K, BUFFERS)
    chunk = gl.arange(0, CH, layout=gl.SliceLayout(1, x_layout))
    column = gl.arange(0, 256, layout=gl.SliceLayout(0, x_layout))
    x_offsets = chunk[:, None] * 256 + column[None, :]
    pair_row = gl.arange(0, HALF, layout=gl.SliceLayout(1, out_layout))
    pair_side = gl.arange(0, 2, layout=gl.SliceLayout(0, out_layout))

    for j in range(count):
        # The buffer the next copy fills was read an item ago, before that item's count-in barrier.
        fence_async_shared()
        ahead = j + BUFFERS - 1
        _issue(w_desc, smem, bars, pid + ahead * programs, ahead, ahead < count, D, Q, KV, INTER, V, LAYERS,
               SPLIT, BLOCK_N, BLOCK_K, BUFFERS)
        phase, kind, _, part, n, k, _, k_lo, _, prev_tiles, in_split, first_row, row_end = _item_scalars(
            pid + j * programs, D, Q, KV, INTER, V, LAYERS, SPLIT, BLOCK_N
        )
        mbarrier.wait(bars.index(j % BUFFERS), (j // BUFFERS) & 1)
        w = smem.index(j % BUFFERS).load(tile_layout)
        _wait(done_ptr, phase, prev_tiles, SLEEP_NS)
        x = gl.zeros([CH, 256], gl.float32, x_layout)
        for s in range(in_split):  # the input's split-K parts, summed in a fixed order
            x += gl.load(act_ptr + phase * ACT_SLOT + k_lo + s * D + x_offsets, cache_modifier=".cg")
        x = x.to(gl.bfloat16).to(gl.float32)  # the input rounds as a bf16 activation would
        acc = gl.sum(gl.sum(w.to(gl.float32) * x[None, None, :, :], axis=3), axis=2)  # (HALF, 2)
        # RMSNorm before the QKV, gate/up and head projections (unit weights): a scale of the sums.
        normed = (kind == 0) | (kind == 2) | (kind == 4)
        sumsq = gl.sum(gl.sum(x * x, axis=1), axis=0)
        acc = gl.where(normed, acc / gl.sqrt(sumsq / k + 1e-5), acc)
        out_off = (phase + 1) * ACT_SLOT
        if kind == 2:  # silu(gate) * up, rounded where the eager ops round
            gate = gl.sum(gl.where(pair_side[None, :] == 0, acc, 0.0), axis=1).to(gl.bfloat16).to(gl.float32)
            up = gl.sum(gl.where(pair_side[None, :] == 1, acc, 0.0), axis=1).to(gl.bfloat16).to(gl.float32)
            act = (gate / (1.0 + gl.exp(-gate))).to(gl.bfloat16).to(gl.float32)
            out = (act * up).to(gl.bfloat16).to(gl.float32)
            cols = first_row // 2 + pair_row
            gl.store(act_ptr + out_off + cols, out, mask=cols < n)
        else:
            rows = first_row + pair_row[:, None] * 2 + pair_side[None, :]
            gl.store(act_ptr + out_off + part * n + rows, acc, mask=rows < row_end)
        _count_in(done_ptr, ticket_ptr, phase, num_phases, (V + BLOCK_N - 1) // BLOCK_N)

    for i in gl.static_range(BUFFERS):
        mbarrier.invalidate(bars.index(i))


def launch_gluon(frame: Frame, variant: Variant) -> int:
    """The Gluon kernel over the whole frame (`resident` programs an SM, `stages` ring buffers);
    returns its grid. Needs every item's K equal to BLOCK_K (a multiple of 256) and one warp a
    chunk of 256."""
    if any(p["k"] // p["split"] != variant.block_k for p in frame.phases) or variant.block_k % 256:
        raise ValueError(f"the Gluon kernel needs every item's K to be BLOCK_K = {variant.block_k}, a multiple of 256")
    chunks = variant.block_k // 256
    if variant.num_warps != chunks:
        raise ValueError(f"the Gluon kernel runs one warp a chunk of 256: num_warps must be {chunks}")
    block = [variant.block_n // 2, 2, chunks, 256]
    rows = frame.weights.view(-1, 2, chunks, 256)
    layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=4)
    desc = TensorDescriptor(rows, list(rows.shape), list(rows.stride()), block, layout)
    args = (desc, frame.acts, frame.ticket, frame.done, frame.programs, len(frame.phases))
    kwargs = {**_geometry_args(frame.geo), "SLEEP_NS": variant.sleep_ns, "BLOCK_N": variant.block_n,
              "BLOCK_K": variant.block_k, "BUFFERS": variant.stages, "num_warps": variant.num_warps}
    grid = resident_programs(_gluon_frame_kernel, args, kwargs, variant)
    _gluon_frame_kernel[(grid,)](*args, **kwargs)
    return grid

