"""Llama-style transformer blocks with a static, slot-indexed KV cache (gpt-fast style).

Numerics follow transformers' Llama/CSM code (fp32 RMSNorm, fp32 RoPE tables cast to the
activation dtype, rotate-half RoPE, SDPA); q/k/v and gate/up projections are fused into one
matmul each.

Cache layout and masking, chosen so a whole step can be captured in a CUDA graph:
- each layer owns `k`/`v` buffers of shape (slots, kv_heads, max_seq_len + 1, head_dim);
- a row of a batch writes its keys at its own `positions`; padding entries (position < 0) are
  routed to the extra last position (a scratch column no valid query ever sees);
- a query at position p attends keys 0..p of its own slot, so stale keys of an earlier request
  in a reused slot are never visible: every position <= p was rewritten by the current request.
No step depends on Python control flow over tensor values and nothing syncs with the host.
"""

from __future__ import annotations

import math

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
    ) -> None:
        super().__init__()
        shape = (n_slots, n_kv_heads, n_positions, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        rows: torch.Tensor,
        write_pos: torch.Tensor,
        slots: torch.Tensor | None,
        kv_len: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v (B, Hkv, T, Dh) at (row, write_pos) and return the rows' first `kv_len` keys/values."""
        # Advanced indices around a slice put the indexed dims first: (B, T, Hkv, Dh).
        self.k[rows[:, None], :, write_pos] = k.transpose(1, 2)
        self.v[rows[:, None], :, write_pos] = v.transpose(1, 2)
        if slots is None:
            b = k.shape[0]
            return self.k[:b, :, :kv_len], self.v[:b, :, :kv_len]
        return self.k[slots, :, :kv_len], self.v[slots, :, :kv_len]


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, cfg.q_dim + 2 * cfg.kv_dim, bias=False)
        self.wo = nn.Linear(cfg.q_dim, cfg.dim, bias=False)
        self.kv_cache: KVCache | None = None
        self._split = (cfg.q_dim, cfg.kv_dim, cfg.kv_dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        rows: torch.Tensor,
        write_pos: torch.Tensor,
        slots: torch.Tensor | None,
        kv_len: int,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.wqkv(x).split(self._split, dim=-1)
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_cache is None:
            raise RuntimeError("KV caches are not set up: call setup_caches() first")
        k, v = self.kv_cache.update(k, v, rows, write_pos, slots, kv_len)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.unsqueeze(1), enable_gqa=self.n_heads != self.n_kv_heads
        )
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """SwiGLU MLP with gate and up projections fused (gate rows first)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.w13 = nn.Linear(cfg.dim, 2 * cfg.intermediate_size, bias=False)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, *args: object) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), *args)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Decoder stack + final norm over a static cache of `max_seq_len` positions per slot."""

    def __init__(self, cfg: TransformerConfig, max_seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_seq_len = max_seq_len
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.n_slots = 0
        self.reset_rope()

    def reset_rope(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the fp32 RoPE tables, e.g. after building the module on the meta device."""
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.rope, self.max_seq_len)  # type: ignore[arg-type]
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def setup_caches(
        self, n_slots: int, dtype: torch.dtype, device: torch.device | str | None = None
    ) -> None:
        """Allocate (or reallocate) caches: one row per slot, `max_seq_len` + 1 scratch positions."""
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(
                n_slots, self.cfg.n_kv_heads, self.max_seq_len + 1, self.cfg.head_dim, dtype, device
            )  # type: ignore[arg-type]
        self.n_slots = n_slots

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor | None = None,
        kv_len: int | None = None,
    ) -> torch.Tensor:
        """x: (B, T, D); positions: (B, T) long, < 0 marks padding; slots: (B,) cache rows or None
        for rows 0..B-1; kv_len: attend only the first kv_len positions (must exceed every valid
        position in the batch; default: all). Returns normed hidden states (B, T, D)."""
        b = x.shape[0]
        scratch = self.max_seq_len
        kv_len = scratch + 1 if kv_len is None else kv_len
        valid = positions >= 0
        write_pos = torch.where(valid, positions, scratch)
        # Padding queries attend the whole window: finite garbage instead of NaN rows.
        query_pos = torch.where(valid, positions, scratch)
        key_pos = torch.arange(kv_len, device=x.device)
        mask = key_pos.view(1, 1, -1) <= query_pos.unsqueeze(-1)
        table_pos = torch.where(valid, positions, 0)
        cos = self.rope_cos[table_pos].to(x.dtype)
        sin = self.rope_sin[table_pos].to(x.dtype)
        rows = slots if slots is not None else torch.arange(b, device=x.device)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, rows, write_pos, slots, kv_len)
        return self.norm(x)
