"""The Triton twins of the eager block backends (`serve_app.model.llama`), for one-token decode steps.

In a decode step every row is one new token in its own cache slot (row b = slot b), and the step is
bound by kernel count, not bytes:
- `TritonDecodeAttention`: RoPE, the cache write and grouped-query attention over each row's own
  prefix in one kernel per layer (`decode_attention`);
- `TritonProjections`: the four matmuls of a layer with RMSNorm, SwiGLU and the residual adds inside
  them (`fused_linear`), so a layer is five launches (plus a split-K reduce for the long matmuls).

Importing this module registers the `csm_serve::` custom ops; it needs Triton.
"""

from __future__ import annotations

import torch

import serve_app.model.kernels.decode_attention  # registers csm_serve::decode_attention
import serve_app.model.kernels.fused_linear  # noqa: F401 - registers csm_serve::fused_linear
from serve_app.model.llama import (
    Attention,
    AttentionInputs,
    Backend,
    RMSNorm,
    TorchProjections,
    Transformer,
)


class TritonDecodeAttention:
    """One token per row: RoPE from the stack's fp32 tables, the cache write at the row's position,
    attention over keys 0..position; idle rows (position < 0) write nothing and output zeros."""

    one_token = True

    def inputs(
        self,
        stack: Transformer,
        positions: torch.Tensor,
        slots: torch.Tensor | None,
        kv_len: int,
        dtype: torch.dtype,
    ) -> AttentionInputs:
        return AttentionInputs(positions, stack.rope_cos, stack.rope_sin, None, None, None, None, kv_len)

    def attend(self, attention: Attention, qkv: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        cache = attention.cache()
        return torch.ops.csm_serve.decode_attention(
            qkv,
            inputs.positions,
            inputs.cos,
            inputs.sin,
            cache.k,
            cache.v,
            attention.n_heads,
            attention.n_kv_heads,
        )


class TritonProjections:
    """Rows (B, D) through the fused matmuls: norm prologue, SwiGLU and residual epilogues."""

    def norm_linear(self, x: torch.Tensor, norm: RMSNorm, weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.csm_serve.fused_linear(x, weight, norm.weight, None, norm.eps, False)

    def linear_add(self, x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return torch.ops.csm_serve.fused_linear(x, weight, None, residual, 0.0, False)

    def norm_gate_up(self, x: torch.Tensor, norm: RMSNorm, weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.csm_serve.fused_linear(x, weight, norm.weight, None, norm.eps, True)


FUSED_ATTENTION = Backend(TritonDecodeAttention(), TorchProjections())
"""The Triton decode attention, cuBLAS projections."""

FUSED = Backend(TritonDecodeAttention(), TritonProjections())
"""The Triton decode attention and the fused Triton projections."""
