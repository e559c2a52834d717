"""Mimi's decoder transformer, run a chunk at a time with a per-slot sliding-window KV cache.

In the full decode, token q attends to keys k with `q - sliding_window < k <= q` (transformers'
`sliding_window_causal_mask_function`). So a stream only ever needs its last `sliding_window - 1`
keys/values. Each slot keeps them in a ring of `sliding_window - 1 + chunk_tokens` entries: a chunk
of up to `chunk_tokens` new tokens writes its keys at `position % ring` (only the new entries are
written; nothing is shifted), then attends to the ring, each entry's absolute position following
from its index and the stream's token count. A longer chunk runs in pieces, which is exact (the
attention is causal). RoPE uses the same absolute positions as the full decode.

The attention is one Triton kernel on CUDA (`serve_app.model.kernels.window_attention`: it reads
each stream's ring in place); elsewhere SDPA over the gathered rings under the same mask. The cache
size is fixed, so a call costs the same at every point of a stream (and keeps shapes static for
CUDA graphs). Layers run the wrapped model's own modules and weights, except three projections
rearranged once for fewer launches (q/k/v stacked; o_proj and fc2 with their layer scales folded in).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.mimi.modeling_mimi import MimiTransformerModel

from serve_app.model.kernels import triton_available

CHUNK_TOKENS = 16
"""New tokens one attention pass takes (16: 8 codec frames at Mimi's two tokens a frame); the ring
holds this many entries beyond the window's context."""

FUSED_ATTENTION: bool | None = None
"""Whether decoders built from now on attend with the Triton kernel (None: on CUDA with Triton, for
heads of a power-of-two size of at least 16)."""


def ring_positions(past: torch.Tensor, length: int, ring: int) -> torch.Tensor:
    """(B, ring): the absolute position each ring entry holds once `length` tokens after `past[b]`
    have been written (negative: never written)."""
    newest = past[:, None] + length - 1
    return newest - torch.remainder(newest - torch.arange(ring, device=past.device), ring)


def _qkv(layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    attn = layer.self_attn
    return attn.q_proj, attn.k_proj, attn.v_proj


def _scaled(weight: torch.Tensor, scale: torch.Tensor, exact: torch.dtype) -> torch.Tensor:
    """`weight` (out, in) with row i times `scale[i]`: `F.linear(x, it) == scale * F.linear(x, weight)`."""
    return (weight.to(exact) * scale.to(exact)[:, None]).to(weight.dtype)


def rotate_half_sin(sin: torch.Tensor) -> torch.Tensor:
    """`sin` with its first half negated: with it, transformers' `x * cos + rotate_half(x) * sin`
    is `x * cos + x.roll(dim / 2) * rotate_half_sin(sin)`, three launches where it takes five."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x (..., dim), as transformers' `apply_rotary_pos_emb` for one
    tensor; `signed_sin` from `rotate_half_sin`."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


def window_attention_sdpa(
    q: torch.Tensor,
    k_ring: torch.Tensor,
    v_ring: torch.Tensor,
    slots: torch.Tensor,
    past: torch.Tensor,
    window: int,
    scale: float,
) -> torch.Tensor:
    """`kernels.window_attention.window_attention` with SDPA: the rings of `slots` gathered, and a
    mask of which entries each new token sees (`q - window < p <= q`)."""
    length, ring = q.shape[2], k_ring.shape[2]
    key_pos = ring_positions(past, length, ring)[:, None, :]
    query_pos = (past[:, None] + torch.arange(length, device=past.device))[:, :, None]
    mask = ((key_pos >= 0) & (key_pos <= query_pos) & (key_pos > query_pos - window))[:, None]
    gqa = q.shape[1] != k_ring.shape[1]
    return F.scaled_dot_product_attention(
        q, k_ring[slots], v_ring[slots], attn_mask=mask, scale=scale, enable_gqa=gqa
    )


class StreamingTransformer:
    """Streaming forward of a `MimiTransformerModel` for up to `max_streams` slots."""

    def __init__(
        self,
        model: MimiTransformerModel,
        max_streams: int,
        device: torch.device,
        dtype: torch.dtype,
        chunk_tokens: int = CHUNK_TOKENS,
        fused: bool | None = None,
    ):
        config = model.config
        if not isinstance(config.sliding_window, int) or config.sliding_window < 1:
            raise ValueError("streaming needs a finite sliding_window on the Mimi config")
        self.model = model
        self.window = config.sliding_window
        self.context = self.window - 1
        self.chunk_tokens = chunk_tokens
        self.ring = self.context + chunk_tokens
        self.head_dim = dim = config.head_dim
        kernel_fits = dim >= 16 and dim & (dim - 1) == 0  # the kernel's tiles: a power of two
        fused = FUSED_ATTENTION if fused is None else fused
        self.fused = device.type == "cuda" and triton_available() and kernel_fits if fused is None else fused
        self._attend = window_attention_sdpa
        if self.fused:
            from serve_app.model.kernels.window_attention import window_attention

            self._attend = window_attention
        # Weights rearranged once (copies; the layers' own modules stay as they are), for fewer
        # launches a layer: q, k and v as one matmul over their weights stacked, and each layer
        # scale folded into the projection before it (o_proj, fc2), whose matmul then also adds
        # the residual (addmm), where projection, scale and add took three launches.
        projections = [
            m
            for layer in model.layers
            for m in (*_qkv(layer), layer.self_attn.o_proj, layer.mlp.fc1, layer.mlp.fc2)
        ]
        if any(m.bias is not None for m in projections):
            raise ValueError("the streaming transformer expects bias-free projections")
        exact = torch.promote_types(dtype, torch.float32)
        with torch.no_grad():
            self.qkv = [torch.cat([m.weight for m in _qkv(layer)]) for layer in model.layers]
            self.out_scaled = [
                _scaled(layer.self_attn.o_proj.weight, layer.self_attn_layer_scale.scale, exact)
                for layer in model.layers
            ]
            self.fc2_scaled = [
                _scaled(layer.mlp.fc2.weight, layer.mlp_layer_scale.scale, exact) for layer in model.layers
            ]
        self.q_width = config.num_attention_heads * self.head_dim
        self.kv_width = config.num_key_value_heads * self.head_dim
        shape = (len(model.layers), max_streams, config.num_key_value_heads, self.ring, self.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)

    def reset(self, slots: torch.Tensor) -> None:
        """Forget the cached keys/values of `slots` (a device index tensor)."""
        self.keys.index_fill_(1, slots, 0)
        self.values.index_fill_(1, slots, 0)

    def __call__(self, x: torch.Tensor, slots: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        """x: (B, L, hidden) new tokens; past: (B,) tokens each slot has already seen."""
        pieces = x.split(self.chunk_tokens, dim=1)
        out = []
        for piece in pieces:
            out.append(self._forward(piece, slots, past))
            past = past + piece.shape[1]
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)

    def _forward(self, x: torch.Tensor, slots: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        positions = past[:, None] + torch.arange(length, device=x.device)
        cos, sin = self.model.rotary_emb(x, positions)
        cos, sin = cos[:, :, None], rotate_half_sin(sin)[:, :, None]  # (B, L, 1, dim): over the heads
        entries = torch.remainder(positions, self.ring)  # (B, L) ring entries of the new tokens
        for index, layer in enumerate(self.model.layers):
            attn = layer.self_attn
            qkv = F.linear(layer.input_layernorm(x), self.qkv[index])
            q, k, v = qkv.split((self.q_width, self.kv_width, self.kv_width), dim=-1)
            q = rotary(q.view(batch, length, -1, self.head_dim), cos, sin).transpose(1, 2)
            k = rotary(k.view(batch, length, -1, self.head_dim), cos, sin)  # (B, L, heads, dim)
            keys, values = self.keys[index], self.values[index]
            keys[slots[:, None], :, entries] = k  # into the rings
            values[slots[:, None], :, entries] = v.view(batch, length, -1, self.head_dim)
            out = self._attend(q, keys, values, slots, past, self.window, attn.scaling)
            out = out.transpose(1, 2).reshape(batch * length, -1)
            x = torch.addmm(x.reshape(batch * length, -1), out, self.out_scaled[index].T)
            h = layer.mlp.activation_fn(F.linear(layer.post_attention_layernorm(x), layer.mlp.fc1.weight))
            x = torch.addmm(x, h, self.fc2_scaled[index].T)
            x = x.view(batch, length, -1)
        return x
