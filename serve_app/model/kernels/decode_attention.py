"""Fused single-token attention for the decode step: RoPE, KV-cache write and grouped-query attention
over each row's own prefix in one Triton kernel.

In a decode step every layer otherwise launches ~6 small kernels for this (RoPE on q and k, two
cache scatters, the mask conversion, SDPA, a layout copy); the step is bound by kernel count, not
bytes, so one launch per layer matters. One program per (row, kv head) handles the `group` query
heads that share the kv head: it rotates q and the new k, stores k/v at the row's position, and runs
an online softmax over keys 0..position (the new key from registers, older keys from the cache), so
a row reads exactly its valid prefix, whatever the batch's longest key window. Rows with position
< 0 are idle slots: they write nothing and output zeros.

The same kernel serves a prompt's rows (`prompt_attention`): rows in any slots (a row-to-slot map),
each at its own position, in two launches, one that writes every row's key/value and one that
attends, since a row reads the keys other programs of the launch write. A prompt's attention is
then two launches a layer, where SDPA over the slot cache takes a dozen small kernels around it
(RoPE pieces, cache scatters and gathers, layout copies).

Its pieces serve the depth loop too (`depth_loop`): `attend_new_row` takes a row's older keys loaded
ahead (`cached_rows`) and its new key and value from registers, with `attend_row`'s numbers.

Numerics: RoPE, scores and softmax in fp32, one rounding of the output to the activation dtype
(the reference rounds after each elementwise op), scale 1/sqrt(head_dim) as SDPA's default.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from serve_app.model.kernels import pdl
from serve_app.model.kernels.keys import settle
from serve_app.model.kernels.pdl import enter


@triton.jit
def rope_at(cos_ptr, sin_ptr, pos, D: tl.constexpr):
    """Position `pos`'s RoPE cos and sin, one half each (the rotate-half layout repeats them)."""
    dims = tl.arange(0, D // 2)
    return tl.load(cos_ptr + pos * D + dims), tl.load(sin_ptr + pos * D + dims)


@triton.jit
def cached_rows(cache_ptr, cache, n_keys, cache_p_stride, D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Positions 0..n_keys-1 of one slot's kv head in a key or value cache (from element `cache`) as
    one block of BLOCK_N positions, in two halves; rows from n_keys on zero."""
    half: tl.constexpr = D // 2
    n = tl.arange(0, BLOCK_N)
    valid = (n < n_keys)[:, None]
    at = cache + n[:, None] * cache_p_stride + tl.arange(0, half)[None, :]
    return tl.load(cache_ptr + at, mask=valid, other=0.0), tl.load(cache_ptr + at + half, mask=valid, other=0.0)


@triton.jit
def _rotated_queries(row, g, c, s, dtype, GROUP: tl.constexpr, GP: tl.constexpr, D: tl.constexpr):
    """q of the GROUP heads served by kv head g (GP rows, the padding zero), rotated, in two halves."""
    half: tl.constexpr = D // 2
    heads = tl.arange(0, GP)
    q_offs = (g * GROUP + heads)[:, None] * D + tl.arange(0, half)[None, :]
    real = (heads < GROUP)[:, None]
    q1 = tl.load(row + q_offs, mask=real, other=0.0, cache_modifier=".cg").to(tl.float32)
    q2 = tl.load(row + q_offs + half, mask=real, other=0.0, cache_modifier=".cg").to(tl.float32)
    return (q1 * c[None, :] - q2 * s[None, :]).to(dtype), (q2 * c[None, :] + q1 * s[None, :]).to(dtype)


@triton.jit
def _scores(q1, q2, kb1, kb2, valid, m, denom, scale, PRECISION: tl.constexpr):
    """One block of keys in the online softmax: the new running max and denominator, the old sums'
    rescale and the block's weights."""
    scores = tl.dot(q1, tl.trans(kb1), input_precision=PRECISION)
    scores += tl.dot(q2, tl.trans(kb2), input_precision=PRECISION)
    scores = tl.where(valid[None, :], scores * scale, float("-inf"))
    m_new = tl.maximum(m, tl.max(scores, axis=1))
    alpha = tl.exp(m - m_new)
    p = tl.exp(scores - m_new[:, None])
    return m_new, denom * alpha + tl.sum(p, axis=1), alpha, p


@triton.jit
def _values(acc1, acc2, alpha, p, vb1, vb2, dtype, PRECISION: tl.constexpr):
    """The block's values added to the rescaled sums."""
    acc1 = acc1 * alpha[:, None] + tl.dot(p.to(dtype), vb1, input_precision=PRECISION)
    acc2 = acc2 * alpha[:, None] + tl.dot(p.to(dtype), vb2, input_precision=PRECISION)
    return acc1, acc2


@triton.jit
def _store_heads(out_ptr, b, g, acc1, acc2, denom, H: tl.constexpr, GROUP: tl.constexpr, GP: tl.constexpr,
                 D: tl.constexpr):
    """The GROUP heads' outputs of row b, one rounding to the output's dtype."""
    half: tl.constexpr = D // 2
    heads = tl.arange(0, GP)
    o1 = (acc1 / denom[:, None]).to(out_ptr.dtype.element_ty)
    o2 = (acc2 / denom[:, None]).to(out_ptr.dtype.element_ty)
    out_offs = b * (H * D) + (g * GROUP + heads)[:, None] * D + tl.arange(0, half)[None, :]
    real = (heads < GROUP)[:, None]
    tl.store(out_ptr + out_offs, o1, mask=real)
    tl.store(out_ptr + out_offs + half, o2, mask=real)


@triton.jit
def attend_row(
    qkv_ptr,  # (B, (H + 2 * HKV) * D)
    b,  # the row
    g,  # the kv head
    slot,  # the row's cache slot
    pos_ptr,  # (B,) int64, row stride pos_stride
    cos_ptr,  # (P, D) fp32
    sin_ptr,
    k_cache_ptr,  # (S, HKV, P + 1, D)
    v_cache_ptr,
    out_ptr,  # (B, H * D)
    pos_stride,
    qkv_stride,
    cache_s_stride,
    cache_h_stride,
    cache_p_stride,
    scale,
    H: tl.constexpr,
    HKV: tl.constexpr,
    GROUP: tl.constexpr,
    GP: tl.constexpr,  # GROUP padded to a tensor-core tile (>= 16 rows)
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
    WRITE: tl.constexpr,  # store the row's rotated key and its value at its position
    ATTEND: tl.constexpr,  # attend keys 0..position and store the output
):
    """One row's token and one kv head: RoPE, the cache write, attention over keys 0..position for
    the GROUP query heads of kv head g. Reads the row's qkv from L2 (.cg): the kernel that folds
    this into its QKV projection reads values other programs of the launch wrote."""
    half: tl.constexpr = D // 2
    dtype = k_cache_ptr.dtype.element_ty
    heads = tl.arange(0, GP)
    real = heads < GROUP
    dims = tl.arange(0, half)
    raw_pos = tl.load(pos_ptr + b * pos_stride)
    live = raw_pos >= 0
    pos = tl.maximum(raw_pos, 0)
    n_keys = tl.where(live, pos + 1, 0)  # keys 0..pos, the new one included
    row = qkv_ptr + b * qkv_stride
    c = tl.load(cos_ptr + pos * D + dims)
    s = tl.load(sin_ptr + pos * D + dims)
    cache = slot * cache_s_stride + g * cache_h_stride
    if WRITE:
        k_offs = H * D + g * D + dims
        k1 = tl.load(row + k_offs, cache_modifier=".cg").to(tl.float32)
        k2 = tl.load(row + k_offs + half, cache_modifier=".cg").to(tl.float32)
        v_offs = (H + HKV) * D + g * D + dims
        new = cache + pos * cache_p_stride + dims
        write = (dims * 0 + raw_pos) >= 0  # idle rows write nothing (a vector mask: the interpreter needs one)
        tl.store(k_cache_ptr + new, (k1 * c - k2 * s).to(dtype), mask=write)
        tl.store(k_cache_ptr + new + half, (k2 * c + k1 * s).to(dtype), mask=write)
        tl.store(v_cache_ptr + new, tl.load(row + v_offs, cache_modifier=".cg").to(dtype), mask=write)
        tl.store(v_cache_ptr + new + half, tl.load(row + v_offs + half, cache_modifier=".cg").to(dtype), mask=write)
        if ATTEND:
            tl.debug_barrier()  # the new key/value are read back below by other threads of this program
    if ATTEND:
        # q of the GROUP heads served by kv head g, rotated (rotate-half layout), in two halves.
        q_offs = (g * GROUP + heads)[:, None] * D + dims[None, :]
        q1 = tl.load(row + q_offs, mask=real[:, None], other=0.0, cache_modifier=".cg").to(tl.float32)
        q2 = tl.load(row + q_offs + half, mask=real[:, None], other=0.0, cache_modifier=".cg").to(tl.float32)
        q1, q2 = (
            (q1 * c[None, :] - q2 * s[None, :]).to(dtype),
            (q2 * c[None, :] + q1 * s[None, :]).to(dtype),
        )
        m = tl.full((GP,), float("-inf"), tl.float32)
        denom = tl.zeros((GP,), tl.float32)
        acc1 = tl.zeros((GP, half), tl.float32)
        acc2 = tl.zeros((GP, half), tl.float32)
        keys = tl.arange(0, BLOCK_N)
        start = 0
        while start < n_keys:
            n = start + keys
            valid = n < n_keys
            kv = cache + n[:, None] * cache_p_stride + dims[None, :]
            kb1 = tl.load(k_cache_ptr + kv, mask=valid[:, None], other=0.0)
            kb2 = tl.load(k_cache_ptr + kv + half, mask=valid[:, None], other=0.0)
            m, denom, alpha, p = _scores(q1, q2, kb1, kb2, valid, m, denom, scale, PRECISION)
            vb1 = tl.load(v_cache_ptr + kv, mask=valid[:, None], other=0.0)
            vb2 = tl.load(v_cache_ptr + kv + half, mask=valid[:, None], other=0.0)
            acc1, acc2 = _values(acc1, acc2, alpha, p, vb1, vb2, dtype, PRECISION)
            start += BLOCK_N
        denom = tl.where(live, denom, 1.0)  # idle rows: acc is 0, output 0
        o1 = (acc1 / denom[:, None]).to(out_ptr.dtype.element_ty)
        o2 = (acc2 / denom[:, None]).to(out_ptr.dtype.element_ty)
        out_offs = b * (H * D) + (g * GROUP + heads)[:, None] * D + dims[None, :]
        tl.store(out_ptr + out_offs, o1, mask=real[:, None])
        tl.store(out_ptr + out_offs + half, o2, mask=real[:, None])


@triton.jit
def attend_new_row(
    qkv_ptr,  # one row's (H + 2 * HKV) * D
    g,  # the kv head
    pos,  # the row's position (live)
    c,  # `rope_at(pos)`
    s,
    kb1,  # `cached_rows` of keys and values 0..pos-1, one block (pos < BLOCK_N), loaded before the row's qkv was
    kb2,
    vb1,
    vb2,
    k_cache_ptr,  # (.., P + 1, D): the row's new key and value stored at `cache` + pos
    v_cache_ptr,
    cache,
    out_ptr,  # the row's H * D
    cache_p_stride,
    scale,
    H: tl.constexpr,
    HKV: tl.constexpr,
    GROUP: tl.constexpr,
    GP: tl.constexpr,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """`attend_row` for a live row whose older keys were loaded ahead (the depth loop loads them before
    its wait for the row's qkv): the new key and value join the block from registers, rounded as
    stored, so the block, the scores and the output are `attend_row`'s; they are stored for later
    rows, and nothing is read back."""
    half: tl.constexpr = D // 2
    dtype = k_cache_ptr.dtype.element_ty
    dims = tl.arange(0, half)
    k_offs = H * D + g * D + dims
    k1 = tl.load(qkv_ptr + k_offs, cache_modifier=".cg").to(tl.float32)
    k2 = tl.load(qkv_ptr + k_offs + half, cache_modifier=".cg").to(tl.float32)
    v_offs = (H + HKV) * D + g * D + dims
    v1 = tl.load(qkv_ptr + v_offs, cache_modifier=".cg").to(dtype)
    v2 = tl.load(qkv_ptr + v_offs + half, cache_modifier=".cg").to(dtype)
    k1, k2 = (k1 * c - k2 * s).to(dtype), (k2 * c + k1 * s).to(dtype)
    new = cache + pos * cache_p_stride + dims
    tl.store(k_cache_ptr + new, k1)
    tl.store(k_cache_ptr + new + half, k2)
    tl.store(v_cache_ptr + new, v1)
    tl.store(v_cache_ptr + new + half, v2)
    at = (tl.arange(0, BLOCK_N) == pos)[:, None]
    kb1 = tl.where(at, k1[None, :], kb1)
    kb2 = tl.where(at, k2[None, :], kb2)
    vb1 = tl.where(at, v1[None, :], vb1)
    vb2 = tl.where(at, v2[None, :], vb2)
    q1, q2 = _rotated_queries(qkv_ptr, g, c, s, dtype, GROUP, GP, D)
    _, denom, alpha, p = _scores(
        q1, q2, kb1, kb2, tl.arange(0, BLOCK_N) <= pos, tl.full((GP,), float("-inf"), tl.float32),
        tl.zeros((GP,), tl.float32), scale, PRECISION,
    )
    acc1, acc2 = _values(
        tl.zeros((GP, half), tl.float32), tl.zeros((GP, half), tl.float32), alpha, p, vb1, vb2, dtype, PRECISION
    )
    _store_heads(out_ptr, 0, g, acc1, acc2, denom, H, GROUP, GP, D)


@triton.jit
def _decode_attention_kernel(
    qkv_ptr,  # (B, (H + 2 * HKV) * D)
    pos_ptr,  # (B,) int64, row stride pos_stride
    slot_ptr,  # (B,) int64 cache slot of each row (read when HAS_SLOTS; else row b is slot b)
    cos_ptr,  # (P, D) fp32
    sin_ptr,
    k_cache_ptr,  # (S, HKV, P + 1, D)
    v_cache_ptr,
    out_ptr,  # (B, H * D)
    pos_stride,
    qkv_stride,
    cache_s_stride,
    cache_h_stride,
    cache_p_stride,
    scale,
    H: tl.constexpr,
    HKV: tl.constexpr,
    GROUP: tl.constexpr,
    GP: tl.constexpr,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
    HAS_SLOTS: tl.constexpr,
    WRITE: tl.constexpr,
    ATTEND: tl.constexpr,
    PDL_WAIT: tl.constexpr,
    PDL_EARLY: tl.constexpr,
):
    enter(PDL_WAIT, PDL_EARLY)
    b = tl.program_id(0)
    if HAS_SLOTS:
        slot = tl.load(slot_ptr + b)
    else:
        slot = b
    attend_row(
        qkv_ptr, b, tl.program_id(1), slot, pos_ptr, cos_ptr, sin_ptr, k_cache_ptr, v_cache_ptr, out_ptr,
        pos_stride, qkv_stride, cache_s_stride, cache_h_stride, cache_p_stride, scale,
        H, HKV, GROUP, GP, D, BLOCK_N, PRECISION, WRITE, ATTEND,
    )


def kernel_constants(n_heads: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype) -> dict[str, object]:
    """`attend_row`'s constexprs for a geometry and cache dtype."""
    group = n_heads // n_kv_heads
    return {
        "H": n_heads,
        "HKV": n_kv_heads,
        "GROUP": group,
        "GP": max(16, triton.next_power_of_2(group)),
        "D": head_dim,
        "BLOCK_N": 32 if head_dim > 64 else 64,
        "PRECISION": "ieee" if dtype == torch.float32 else "tf32",
    }


def launch(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    slots: torch.Tensor | None = None,
    write: bool = True,
    attend: bool = True,
) -> torch.Tensor:
    """Run the kernel (one program per row and kv head); see `decode_attention` and
    `prompt_attention`. Without `attend` the returned output is left unwritten."""
    b = qkv.shape[0]
    d = k_cache.shape[-1]
    out = torch.empty(b if attend else 0, n_heads * d, dtype=qkv.dtype, device=qkv.device)
    if b == 0:
        return out
    _decode_attention_kernel[(b, n_kv_heads)](
        qkv,
        positions,
        positions if slots is None else slots,
        cos,
        sin,
        k_cache,
        v_cache,
        out if attend else qkv,  # not written without `attend`: any tensor of the dtype
        positions.stride(0),
        qkv.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        1.0 / math.sqrt(d),
        HAS_SLOTS=slots is not None,
        WRITE=write,
        ATTEND=attend,
        num_warps=4,
        **kernel_constants(n_heads, n_kv_heads, d, k_cache.dtype),
        **pdl.launch_options(qkv.device),
    )
    return out


@torch.library.custom_op("csm_serve::decode_attention", mutates_args=("k_cache", "v_cache"))
def decode_attention(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
) -> torch.Tensor:
    """Attention output (B, n_heads * head_dim) for one new token per row b (= cache slot b).

    qkv (B, (n_heads + 2 n_kv_heads) * head_dim) is the fused projection of the token; positions
    (B,) long its position (< 0: idle row); cos/sin (P, head_dim) fp32 RoPE tables; k_cache and
    v_cache (slots, n_kv_heads, P + 1, head_dim) get the new key/value at [b, :, position]."""
    return launch(qkv, positions, cos, sin, k_cache, v_cache, n_heads, n_kv_heads)


@decode_attention.register_fake
def _(qkv, positions, cos, sin, k_cache, v_cache, n_heads, n_kv_heads):  # type: ignore[no-untyped-def]
    return qkv.new_empty(qkv.shape[0], n_heads * k_cache.shape[-1])


@torch.library.custom_op("csm_serve::prompt_attention", mutates_args=("k_cache", "v_cache"))
def prompt_attention(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
) -> torch.Tensor:
    """Attention output (R, n_heads * head_dim) for prompt rows: row r is a token at `positions[r]`
    (< 0: padding, which writes nothing and outputs zeros) of cache slot `slots[r]`, attending keys
    0..position of its slot, those of the rows before it in the same prompt included. Every row's
    key/value is written first, in a launch of its own; then every row attends."""
    launch(qkv, positions, cos, sin, k_cache, v_cache, n_heads, n_kv_heads, slots, attend=False)
    return launch(qkv, positions, cos, sin, k_cache, v_cache, n_heads, n_kv_heads, slots, write=False)


@prompt_attention.register_fake
def _(qkv, positions, slots, cos, sin, k_cache, v_cache, n_heads, n_kv_heads):  # type: ignore[no-untyped-def]
    return qkv.new_empty(qkv.shape[0], n_heads * k_cache.shape[-1])


settle(globals())  # every key the same in every process (see `keys`)
