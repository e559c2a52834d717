"""Sliding-window attention of a chunk of new tokens over each stream's ring of cached keys, in one
Triton kernel: the streaming Mimi decoder's attention.

The decoder transformer keeps, per stream slot, its last keys and values in a ring of `R` entries
(`serve_app.model.mimi_stream_transformer`): the new tokens are written in place, and token q sees
the ring entries whose absolute position p satisfies `q - window < p <= q`. Done with SDPA, every
call gathers the batch's rings into one tensor (a copy of the whole cache of every stream in the
call) and builds a mask, and those copies cost more than the attention itself
(`benchmarks/results/2026-12-03-1203-nvidia-h200-mimi-profile.txt`). Here one program per (stream,
head) reads its own ring where it lies, through the slot index, with an online softmax over blocks
of keys; positions come from the ring index and the stream's token count, so nothing else is built.

Numerics: scores, softmax and the weighted sum accumulate in fp32; one rounding to the activation
dtype at the end (SDPA's flash kernels do the same).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from serve_app.model.kernels.keys import settle


@triton.jit
def _window_attention_kernel(
    q_ptr,  # (B, H, L, D), D contiguous
    k_ptr,  # (S, H // GROUP, R, D) ring of one layer
    v_ptr,
    slots_ptr,  # (B,) int64
    past_ptr,  # (B,) int64: tokens each stream had seen before this chunk
    out_ptr,  # (B, H, L, D), D contiguous
    q_sb,
    q_sh,
    q_sl,
    c_ss,
    c_sh,
    c_sr,
    o_sb,
    o_sh,
    o_sl,
    length,
    ring,
    window,
    scale,
    GROUP: tl.constexpr,  # query heads per kv head
    LP: tl.constexpr,  # length padded to a tensor-core tile (>= 16 rows)
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    dtype = k_ptr.dtype.element_ty
    slot = tl.load(slots_ptr + b)
    past = tl.load(past_ptr + b)
    rows = tl.arange(0, LP)
    dims = tl.arange(0, D)
    real = rows < length
    q = tl.load(
        q_ptr + b * q_sb + h * q_sh + rows[:, None] * q_sl + dims[None, :], mask=real[:, None], other=0.0
    )
    q_pos = past + rows
    newest = past + length - 1  # the newest token's position; the ring holds it at newest % ring
    cache = slot * c_ss + (h // GROUP) * c_sh
    m = tl.full((LP,), float("-inf"), tl.float32)
    denom = tl.zeros((LP,), tl.float32)
    acc = tl.zeros((LP, D), tl.float32)
    for start in range(0, ring, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        in_ring = j < ring
        back = (newest - j) % ring
        back = tl.where(back < 0, back + ring, back)  # a remainder with the divisor's sign
        p = newest - back  # the position ring entry j holds (negative: never written)
        offs = cache + j[:, None] * c_sr + dims[None, :]
        kb = tl.load(k_ptr + offs, mask=in_ring[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(kb), input_precision=PRECISION) * scale
        seen = in_ring[None, :] & (p[None, :] >= 0) & (p[None, :] <= q_pos[:, None])
        seen = seen & (p[None, :] > q_pos[:, None] - window)
        scores = tl.where(seen, scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: no NaN
        alpha = tl.exp(m - m_safe)
        weights = tl.exp(scores - m_safe[:, None])
        denom = denom * alpha + tl.sum(weights, axis=1)
        vb = tl.load(v_ptr + offs, mask=in_ring[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(weights.to(dtype), vb, input_precision=PRECISION)
        m = m_new
    denom = tl.where(real, denom, 1.0)
    out = (acc / denom[:, None]).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + b * o_sb + h * o_sh + rows[:, None] * o_sl + dims[None, :], out, mask=real[:, None])


def window_attention(
    q: torch.Tensor,
    k_ring: torch.Tensor,
    v_ring: torch.Tensor,
    slots: torch.Tensor,
    past: torch.Tensor,
    window: int,
    scale: float,
) -> torch.Tensor:
    """Attention (B, H, L, D) of `q` (B, H, L, D; token i of stream b at position past[b] + i) over
    the rings `k_ring`/`v_ring` (S, HKV, R, D) of `slots` (H a multiple of HKV), which already hold
    the chunk's own keys;
    token q sees positions `q - window < p <= q`. The result is a (B, H, L, D) view of a (B, L, H, D)
    tensor, so merging the heads afterwards is free."""
    batch, heads, length, dim = q.shape
    ring = k_ring.shape[2]
    if heads % k_ring.shape[1] or length > ring:
        raise ValueError(f"{heads} query heads over rings of {k_ring.shape[1]}; {length} tokens, ring {ring}")
    out = torch.empty(batch, length, heads, dim, dtype=q.dtype, device=q.device).transpose(1, 2)
    if batch == 0:
        return out
    _window_attention_kernel[(batch, heads)](
        q,
        k_ring,
        v_ring,
        slots,
        past,
        out,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k_ring.stride(0),
        k_ring.stride(1),
        k_ring.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        length,
        ring,
        window,
        scale,
        GROUP=heads // k_ring.shape[1],
        LP=max(16, triton.next_power_of_2(length)),
        D=dim,
        BLOCK_N=64,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4,
    )
    return out


settle(globals())  # every key the same in every process (see `keys`)
