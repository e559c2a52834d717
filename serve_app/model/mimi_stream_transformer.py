"""Mimi's decoder transformer, run a chunk at a time with a per-slot sliding-window KV cache.

In the full decode, token q attends to keys k with `q - sliding_window < k <= q` (transformers'
`sliding_window_causal_mask_function`). So a stream only ever needs its last `sliding_window - 1`
keys/values: each slot keeps exactly those, in order, in a fixed-size cache. A chunk attends to
`[cache, new tokens]` under a mask built from absolute positions, which also hides the cache rows a
young stream has not filled yet. RoPE uses the same absolute positions as the full decode.

The cache size is fixed, so a call costs the same at every point of a stream (and keeps shapes
static for CUDA graphs). Layers are the wrapped model's own modules; no weight is copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.mimi.modeling_mimi import MimiTransformerModel, apply_rotary_pos_emb


class StreamingTransformer:
    """Streaming forward of a `MimiTransformerModel` for up to `max_streams` slots."""

    def __init__(
        self, model: MimiTransformerModel, max_streams: int, device: torch.device, dtype: torch.dtype
    ):
        config = model.config
        if not isinstance(config.sliding_window, int) or config.sliding_window < 1:
            raise ValueError("streaming needs a finite sliding_window on the Mimi config")
        self.model = model
        self.window = config.sliding_window
        self.context = self.window - 1
        self.head_dim = config.head_dim
        self.gqa = config.num_key_value_heads != config.num_attention_heads
        shape = (len(model.layers), max_streams, config.num_key_value_heads, self.context, self.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)

    def reset(self, slots: torch.Tensor) -> None:
        """Forget the cached keys/values of `slots` (a device index tensor)."""
        self.keys.index_fill_(1, slots, 0)
        self.values.index_fill_(1, slots, 0)

    def _mask(self, past: torch.Tensor, length: int) -> torch.Tensor:
        """(B, 1, length, context + length) bool: which cached/new keys each new token may see."""
        steps = torch.arange(self.context + length, device=past.device)
        key_pos = past[:, None] - self.context + steps  # (B, context + length)
        query_pos = past[:, None] + steps[:length]  # (B, length)
        k, q = key_pos[:, None, :], query_pos[:, :, None]
        return ((k >= 0) & (k <= q) & (k > q - self.window))[:, None]

    def __call__(self, x: torch.Tensor, slots: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        """x: (B, L, hidden) new tokens; past: (B,) tokens each slot has already seen."""
        batch, length, _ = x.shape
        positions = past[:, None] + torch.arange(length, device=x.device)
        cos, sin = self.model.rotary_emb(x, positions)
        mask = self._mask(past, length)
        for index, layer in enumerate(self.model.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(batch, length, -1, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(batch, length, -1, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(batch, length, -1, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k = torch.cat([self.keys[index, slots], k], dim=2)
            v = torch.cat([self.values[index, slots], v], dim=2)
            if self.context:
                self.keys[index, slots] = k[:, :, -self.context :]
                self.values[index, slots] = v[:, :, -self.context :]
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=attn.scaling, enable_gqa=self.gqa
            )
            out = attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
            x = x + layer.self_attn_layer_scale(out)
            x = x + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(x)))
        return x
