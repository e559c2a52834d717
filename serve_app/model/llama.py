"""Llama-style transformer blocks over a static, slot-indexed KV cache (gpt-fast style): one block
implementation whose attention and projections come from a backend.

Numerics follow transformers' Llama/CSM code (fp32 RMSNorm, fp32 RoPE tables cast to the
activation dtype, rotate-half RoPE, SDPA); q/k/v and gate/up projections are fused into one
matmul each. A block is always

    qkv = norm+project(x);  out = attend(qkv);  h = x + project(out);  x' = h + down(swiglu(norm+gate/up(h)))

and a `Backend` says how each piece runs: `EAGER` is plain PyTorch (any number of tokens per row,
the path the transformers parity tests check); `serve_app.model.kernels.backends` has the Triton
twins for one-token decode steps. `torch.compile` wraps whichever backend a caller picks.

Cache layout, chosen so a whole step can be captured in a CUDA graph:
- each layer owns `k`/`v` buffers of shape (slots, kv_heads, max_seq_len + 1, head_dim); the last
  position is a scratch column that no valid query ever attends;
- a query at position p attends keys 0..p of its own slot, so stale keys of an earlier request in a
  reused slot are never visible: every position <= p was rewritten by the current request.

Padding (the one definition every backend honours): a row position < 0 is padding (right- or
left-padded prefill) or an idle slot (decode). Its output is unspecified but finite, and it writes no
cache entry that a valid query can read. The eager backend treats such a query as position 0 (RoPE
of position 0, attends key 0 of its own row) and writes its key/value to the scratch column; the fused
decode kernel writes nothing and outputs zeros. No step depends on Python control flow over tensor
values and nothing syncs with the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from serve_app.model.config import RopeConfig, TransformerConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rope_inv_freq(head_dim: int, rope: RopeConfig) -> torch.Tensor:
    """Inverse frequencies (fp32), Llama-3 scaled when `rope.kind == "llama3"`."""
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope.kind == "default":
        return inv_freq
    factor, low, high = rope.factor, rope.low_freq_factor, rope.high_freq_factor
    old_len = rope.original_max_position_embeddings
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_tables(head_dim: int, rope: RopeConfig, n_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (n_positions, head_dim) in fp32, laid out for rotate-half RoPE."""
    freqs = torch.outer(torch.arange(n_positions, dtype=torch.float32), rope_inv_freq(head_dim, rope))
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, Dh); cos/sin: (B, T, Dh) already in x's dtype."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


class KVCache(nn.Module):
    """Static per-layer key/value buffers indexed by (slot, position)."""

    def __init__(
        self,
        n_slots: int,
        n_kv_heads: int,
        n_positions: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
        storage: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """`storage`: the (k, v) tensors to use (views of a stack's caches), else zeros of their own."""
        super().__init__()
        shape = (n_slots, n_kv_heads, n_positions, head_dim)
        if storage is None:
            storage = tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in "kv")  # type: ignore[assignment]
        assert storage is not None and all(t.shape == shape for t in storage)
        self.register_buffer("k", storage[0], persistent=False)
        self.register_buffer("v", storage[1], persistent=False)

    def update(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        rows: torch.Tensor,
        write_pos: torch.Tensor,
        slots: torch.Tensor | None,
        kv_len: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v (B, Hkv, T, Dh) at (row, write_pos) and return the rows' first `kv_len` keys/values
        (a view of the cache when the batch rows are slots 0..B-1, a gather otherwise)."""
        # Advanced indices around a slice put the indexed dims first: (B, T, Hkv, Dh).
        self.k[rows[:, None], :, write_pos] = k.transpose(1, 2)
        self.v[rows[:, None], :, write_pos] = v.transpose(1, 2)
        if slots is None:
            b = k.shape[0]
            return self.k[:b, :, :kv_len], self.v[:b, :, :kv_len]
        return self.k[slots, :, :kv_len], self.v[slots, :, :kv_len]


class Attention(nn.Module):
    """Attention weights and cache of one layer; how it attends is the backend's business."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, cfg.q_dim + 2 * cfg.kv_dim, bias=False)
        self.wo = nn.Linear(cfg.q_dim, cfg.dim, bias=False)
        self.kv_cache: KVCache | None = None
        self.split_sizes = (cfg.q_dim, cfg.kv_dim, cfg.kv_dim)

    def cache(self) -> KVCache:
        if self.kv_cache is None:
            raise RuntimeError("KV caches are not set up: call setup_caches() first")
        return self.kv_cache


class FeedForward(nn.Module):
    """SwiGLU MLP weights, gate and up projections fused (gate rows first)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.w13 = nn.Linear(cfg.dim, 2 * cfg.intermediate_size, bias=False)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.dim, bias=False)


# ---- backends ----------------------------------------------------------------------------------------
class AttentionInputs(NamedTuple):
    """What every layer of one stack forward attends with, computed once per forward."""

    positions: torch.Tensor  # (B, T) long, < 0: padding; (B,) for one-token backends
    cos: torch.Tensor  # eager: (B, T, Dh) in the activation dtype; fused: the fp32 table (P, Dh)
    sin: torch.Tensor
    write_pos: torch.Tensor | None = None  # (B, T): cache position written (padding: scratch)
    mask: torch.Tensor | None = None  # (B, 1, group * T, kv_len) bool: keys each query attends
    rows: torch.Tensor | None = None  # (B,) cache slot of each batch row
    slots: torch.Tensor | None = None  # the caller's slots (None: rows 0..B-1, read as a view)
    kv_len: int = 0


class AttentionBackend(Protocol):
    one_token: bool
    """True for backends that take exactly one new token per batch row, row b being cache slot b."""

    def inputs(
        self,
        stack: Transformer,
        positions: torch.Tensor,
        slots: torch.Tensor | None,
        kv_len: int,
        dtype: torch.dtype,
    ) -> AttentionInputs: ...

    def attend(self, attention: Attention, qkv: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        """qkv (..., q + 2 kv) → attention output (..., q), writing the new keys/values."""
        ...


class ProjectionBackend(Protocol):
    def norm_linear(self, x: torch.Tensor, norm: RMSNorm, weight: torch.Tensor) -> torch.Tensor:
        """norm(x) @ weight^T for a weight (N, K) of any strides (a head's transposed view too)."""
        ...

    def linear_add(self, x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + x @ weight^T."""
        ...

    def norm_gate_up(self, x: torch.Tensor, norm: RMSNorm, weight: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up of norm(x) @ weight^T (the fused gate/up weight, gate rows first)."""
        ...


class TorchAttention:
    """SDPA over the slot cache, any number of tokens per row, rows in any slots.

    Grouped-query attention runs over queries laid out (B, kv_heads, group * T, head_dim) against the
    un-expanded cache, so K/V are read once, never repeated per query head; a per-row mask hides
    keys past each query's own position within the static key window `kv_len`."""

    one_token = False

    def inputs(
        self,
        stack: Transformer,
        positions: torch.Tensor,
        slots: torch.Tensor | None,
        kv_len: int,
        dtype: torch.dtype,
    ) -> AttentionInputs:
        b, t = positions.shape
        first = stack.layers[0].attention
        group = first.n_heads // first.n_kv_heads
        valid = positions >= 0
        write_pos = torch.where(valid, positions, stack.max_seq_len)  # padding: the scratch column
        query_pos = positions.clamp(min=0)  # padding: a query at position 0
        keys = torch.arange(kv_len, device=positions.device)
        mask = keys.view(1, 1, -1) <= query_pos.unsqueeze(-1)  # (B, T, L)
        mask = mask.unsqueeze(1).expand(b, group, t, kv_len).reshape(b, 1, group * t, kv_len)
        rows = slots if slots is not None else torch.arange(b, device=positions.device)
        return AttentionInputs(
            positions,
            stack.rope_cos[query_pos].to(dtype),
            stack.rope_sin[query_pos].to(dtype),
            write_pos,
            mask,
            rows,
            slots,
            kv_len,
        )

    def attend(self, attention: Attention, qkv: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        b, t, _ = qkv.shape
        h, hkv, dh = attention.n_heads, attention.n_kv_heads, attention.head_dim
        group = h // hkv
        q, k, v = qkv.split(attention.split_sizes, dim=-1)
        q = apply_rope(q.view(b, t, h, dh).transpose(1, 2), inputs.cos, inputs.sin)
        k = apply_rope(k.view(b, t, hkv, dh).transpose(1, 2), inputs.cos, inputs.sin)
        v = v.view(b, t, hkv, dh).transpose(1, 2)
        rows, write_pos = inputs.rows, inputs.write_pos
        assert rows is not None and write_pos is not None, "inputs of another attention backend"
        keys, values = attention.cache().update(k, v, rows, write_pos, inputs.slots, inputs.kv_len)
        # Query head h uses kv head h // group (transformers' repeat_kv order): fold the group into T.
        out = F.scaled_dot_product_attention(
            q.reshape(b, hkv, group * t, dh), keys, values, attn_mask=inputs.mask
        )
        return out.reshape(b, h, t, dh).transpose(1, 2).reshape(b, t, -1)


class TorchProjections:
    """nn.Linear matmuls (cuBLAS on a GPU) with separate norm, activation and residual ops."""

    def norm_linear(self, x: torch.Tensor, norm: RMSNorm, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(norm(x), weight)

    def linear_add(self, x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return residual + F.linear(x, weight)

    def norm_gate_up(self, x: torch.Tensor, norm: RMSNorm, weight: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(norm(x), weight).chunk(2, dim=-1)
        return F.silu(gate) * up


class QkvAttention(Protocol):
    def __call__(self, attention: Attention, norm: RMSNorm, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        """x (..., D) → attention output (..., q) of norm(x)'s QKV projection, writing the new keys/values."""
        ...


@dataclass(frozen=True)
class Backend:
    """How a block runs: its attention and its projections, and optionally the QKV projection and
    the attention as one call."""

    attention: AttentionBackend
    projections: ProjectionBackend
    fused_qkv_attention: QkvAttention | None = None

    def qkv_attention(
        self, attention: Attention, norm: RMSNorm, x: torch.Tensor, inputs: AttentionInputs
    ) -> torch.Tensor:
        """The attention output of a block's input x: its normed QKV projection, then the attention."""
        if self.fused_qkv_attention is not None:
            return self.fused_qkv_attention(attention, norm, x, inputs)
        qkv = self.projections.norm_linear(x, norm, attention.wqkv.weight)
        return self.attention.attend(attention, qkv, inputs)


EAGER = Backend(TorchAttention(), TorchProjections())
"""Plain PyTorch: the reference numerics, prefill and decode alike, on any device."""


# ---- the block and the stack ------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, backend: Backend = EAGER) -> torch.Tensor:
        p, attn, ff = backend.projections, self.attention, self.feed_forward
        h = p.linear_add(backend.qkv_attention(attn, self.attention_norm, x, inputs), attn.wo.weight, x)
        return p.linear_add(p.norm_gate_up(h, self.ffn_norm, ff.w13.weight), ff.w2.weight, h)


class Transformer(nn.Module):
    """Decoder stack + final norm over a static cache of `max_seq_len` positions per slot."""

    def __init__(self, cfg: TransformerConfig, max_seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_seq_len = max_seq_len
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.n_slots = 0
        self.caches: tuple[torch.Tensor, ...] = ()  # (k, v), each (layers, slots, kv heads, positions, head dim)
        self.reset_rope()

    def reset_rope(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the fp32 RoPE tables, e.g. after building the module on the meta device."""
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.rope, self.max_seq_len)  # type: ignore[arg-type]
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def setup_caches(
        self, n_slots: int, dtype: torch.dtype, device: torch.device | str | None = None
    ) -> None:
        """Allocate (or reallocate) caches: one row per slot, `max_seq_len` + 1 scratch positions.
        The layers' keys (and values) are views of one tensor, `caches` (layers first), so a kernel
        that runs every layer finds a layer's cache at a fixed stride."""
        shape = (len(self.layers), n_slots, self.cfg.n_kv_heads, self.max_seq_len + 1, self.cfg.head_dim)
        self.caches = tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in "kv")
        for i, layer in enumerate(self.layers):
            layer.attention.kv_cache = KVCache(
                n_slots, self.cfg.n_kv_heads, self.max_seq_len + 1, self.cfg.head_dim, dtype, device,
                storage=(self.caches[0][i], self.caches[1][i]),
            )  # type: ignore[arg-type]
        self.n_slots = n_slots

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor | None = None,
        kv_len: int | None = None,
        backend: Backend = EAGER,
        final_norm: bool = True,
    ) -> torch.Tensor:
        """x: (B, T, D); positions: (B, T) long, < 0 marks padding (see the module docstring);
        slots: (B,) cache rows, or None for rows 0..B-1; kv_len: attend only the first kv_len
        positions (a static bucket that must exceed every valid position; default: all).

        Returns the hidden states (B, T, D), final-normed unless `final_norm` is False (a caller
        that fuses the norm into its head)."""
        kv_len = self.max_seq_len if kv_len is None else kv_len
        attention = backend.attention
        if attention.one_token:  # one new token per row = cache slot: rows are (B, D)
            if x.shape[1] != 1 or slots is not None:
                raise ValueError("a one-token backend takes one token per row, rows 0..B-1")
            x, positions = x[:, 0], positions[:, 0]
        inputs = attention.inputs(self, positions, slots, kv_len, x.dtype)
        for layer in self.layers:
            x = layer(x, inputs, backend)
        if final_norm:
            x = self.norm(x)
        return x.unsqueeze(1) if attention.one_token else x
