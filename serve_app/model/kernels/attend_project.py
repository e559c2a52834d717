"""One-token attention and the attention output projection in one Triton kernel, for short key
windows at small batches (the depth decoder: at most 33 positions a frame).

At batch 1 a depth-decoder layer is five launches (QKV, attention, output projection, gate/up,
down), each a few µs of launch and ramp for little work, and the depth decoder runs 31 times a
frame. Here the attention rides in the output projection: each program owns a tile of output
columns for one row, computes that row's attention for every head (RoPE on q and the new key, an
online softmax over keys 0..position: older keys from the cache, the new one from registers), and
multiplies it into its tile of the projection's weight. Every column tile recomputes the row's
attention, which costs little only while the key window is short and the batch small
(`MAX_KEYS`, and the caller's batch limit); the program of the first tile also writes the new key
and value to the cache (the others never read that position, so there is no race).

Numerics: as `decode_attention` (RoPE, scores and softmax in fp32, the attention output rounded once
to the activation dtype), then the projection's products summed in fp32 and the residual added in
fp32 and rounded once, as `fused_linear`'s residual epilogue. Idle rows (position < 0) write nothing
and output the residual.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from serve_app.model.kernels import pdl
from serve_app.model.kernels.pdl import enter

MAX_KEYS = 64
"""Longest key window (positions of the attending token + 1) the fused kernel serves: one block of keys."""


@triton.jit
def _attend_project_kernel(
    qkv_ptr,  # (B, (H + 2 * HKV) * D)
    pos_ptr,  # (B,) int64
    cos_ptr,  # (P, D) fp32
    sin_ptr,
    k_cache_ptr,  # (S, HKV, P + 1, D)
    v_cache_ptr,
    w_ptr,  # (N, H * D): the output projection's weight
    res_ptr,  # (B, N)
    out_ptr,  # (B, N)
    N,
    pos_stride,
    qkv_stride,
    cache_s_stride,
    cache_h_stride,
    cache_p_stride,
    stride_wn,
    stride_rm,
    stride_om,
    scale,
    H: tl.constexpr,
    HKV: tl.constexpr,
    GROUP: tl.constexpr,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_KEYS: tl.constexpr,
    PDL_WAIT: tl.constexpr,
    PDL_EARLY: tl.constexpr,
):
    enter(PDL_WAIT, PDL_EARLY)
    tile = tl.program_id(0)
    b = tl.program_id(1)
    half: tl.constexpr = D // 2
    dtype = k_cache_ptr.dtype.element_ty
    dims = tl.arange(0, half)
    cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    raw_pos = tl.load(pos_ptr + b * pos_stride)
    live = raw_pos >= 0
    pos = tl.maximum(raw_pos, 0)
    c = tl.load(cos_ptr + pos * D + dims)
    s = tl.load(sin_ptr + pos * D + dims)
    row = qkv_ptr + b * qkv_stride
    keys = tl.arange(0, BLOCK_KEYS)
    older = keys < pos  # keys 0..pos-1 come from the cache
    write = (dims * 0 + raw_pos) >= 0  # idle rows write nothing (a vector mask: the interpreter needs one)
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for g in tl.static_range(HKV):
        k1 = tl.load(row + H * D + g * D + dims).to(tl.float32)
        k2 = tl.load(row + H * D + g * D + half + dims).to(tl.float32)
        k1, k2 = (k1 * c - k2 * s).to(dtype), (k2 * c + k1 * s).to(dtype)  # rounded as the cache holds it
        v1 = tl.load(row + (H + HKV) * D + g * D + dims).to(dtype)
        v2 = tl.load(row + (H + HKV) * D + g * D + half + dims).to(dtype)
        cache = b * cache_s_stride + g * cache_h_stride
        if tile == 0:
            new = cache + pos * cache_p_stride + dims
            tl.store(k_cache_ptr + new, k1, mask=write)
            tl.store(k_cache_ptr + new + half, k2, mask=write)
            tl.store(v_cache_ptr + new, v1, mask=write)
            tl.store(v_cache_ptr + new + half, v2, mask=write)
        kv = cache + keys[:, None] * cache_p_stride + dims[None, :]
        kb1 = tl.load(k_cache_ptr + kv, mask=older[:, None], other=0.0).to(tl.float32)
        kb2 = tl.load(k_cache_ptr + kv + half, mask=older[:, None], other=0.0).to(tl.float32)
        vb1 = tl.load(v_cache_ptr + kv, mask=older[:, None], other=0.0).to(tl.float32)
        vb2 = tl.load(v_cache_ptr + kv + half, mask=older[:, None], other=0.0).to(tl.float32)
        for j in tl.static_range(GROUP):
            head = g * GROUP + j
            q1 = tl.load(row + head * D + dims).to(tl.float32)
            q2 = tl.load(row + head * D + half + dims).to(tl.float32)
            q1, q2 = (q1 * c - q2 * s).to(dtype).to(tl.float32), (q2 * c + q1 * s).to(dtype).to(tl.float32)
            scores = tl.sum(kb1 * q1[None, :], axis=1) + tl.sum(kb2 * q2[None, :], axis=1)
            scores = tl.where(older, scores * scale, float("-inf"))
            new_score = (
                tl.sum(k1.to(tl.float32) * q1, axis=0) + tl.sum(k2.to(tl.float32) * q2, axis=0)
            ) * scale
            top = tl.maximum(tl.max(scores, axis=0), new_score)
            p = tl.exp(scores - top)
            p_new = tl.exp(new_score - top)
            denom = tl.sum(p, axis=0) + p_new
            p = p.to(dtype).to(tl.float32)  # the probabilities meet V in the activation dtype
            p_new_r = p_new.to(dtype).to(tl.float32)
            o1 = tl.sum(p[:, None] * vb1, axis=0) + p_new_r * v1.to(tl.float32)
            o2 = tl.sum(p[:, None] * vb2, axis=0) + p_new_r * v2.to(tl.float32)
            o1 = (o1 / denom).to(dtype).to(tl.float32)
            o2 = (o2 / denom).to(dtype).to(tl.float32)
            w = w_ptr + cols[:, None] * stride_wn + head * D + dims[None, :]
            w1 = tl.load(w, mask=col_ok[:, None], other=0.0).to(tl.float32)
            w2 = tl.load(w + half, mask=col_ok[:, None], other=0.0).to(tl.float32)
            acc += tl.sum(w1 * o1[None, :], axis=1) + tl.sum(w2 * o2[None, :], axis=1)
    acc = tl.where(live, acc, 0.0)
    proj = acc.to(out_ptr.dtype.element_ty).to(tl.float32)  # rounded where the unfused projection rounds
    r = tl.load(res_ptr + b * stride_rm + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + b * stride_om + cols, (r + proj).to(out_ptr.dtype.element_ty), mask=col_ok)


def launch(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    max_keys: int,
) -> torch.Tensor:
    """Run the kernel; see `attend_project`."""
    b, d = qkv.shape[0], k_cache.shape[-1]
    n = weight.shape[0]
    if weight.shape[1] != n_heads * d:
        raise ValueError(f"the projection takes {weight.shape[1]} inputs for {n_heads} heads of {d}")
    if max_keys > MAX_KEYS:
        raise ValueError(f"a key window of {max_keys} is beyond the fused kernel's {MAX_KEYS}")
    out = torch.empty(b, n, dtype=residual.dtype, device=qkv.device)
    if b == 0:
        return out
    block_n = 32
    _attend_project_kernel[(triton.cdiv(n, block_n), b)](
        qkv,
        positions,
        cos,
        sin,
        k_cache,
        v_cache,
        weight,
        residual,
        out,
        n,
        positions.stride(0),
        qkv.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        weight.stride(0),
        residual.stride(0),
        out.stride(0),
        1.0 / math.sqrt(d),
        H=n_heads,
        HKV=n_kv_heads,
        GROUP=n_heads // n_kv_heads,
        D=d,
        BLOCK_N=block_n,
        BLOCK_KEYS=max(16, triton.next_power_of_2(max_keys)),
        num_warps=4,
        **pdl.launch_options(qkv.device),
    )
    return out


@torch.library.custom_op("csm_serve::attend_project", mutates_args=("k_cache", "v_cache"))
def attend_project(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    max_keys: int,
) -> torch.Tensor:
    """residual + attention(qkv) @ weight^T for one new token per row b (= cache slot b), as
    `decode_attention` followed by the output projection's `fused_linear`; `max_keys` bounds every
    live row's position + 1 (at most `MAX_KEYS`)."""
    return launch(qkv, positions, cos, sin, k_cache, v_cache, weight, residual, n_heads, n_kv_heads, max_keys)


@attend_project.register_fake
def _(qkv, positions, cos, sin, k_cache, v_cache, weight, residual, n_heads, n_kv_heads, max_keys):  # type: ignore[no-untyped-def]
    return residual.new_empty(qkv.shape[0], weight.shape[0])
