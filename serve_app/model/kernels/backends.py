"""The Triton twins of the eager block backends (`serve_app.model.llama`), for one-token decode steps
(and the projections of short prompts' prefill).

In a decode step every row is one new token in its own cache slot (row b = slot b), and the step is
bound by kernel count, not bytes (and so are short prompts' prefills):
- `TritonDecodeAttention`: RoPE, the cache write and grouped-query attention over each row's own
  prefix in one kernel per layer (`decode_attention`); `TritonPromptAttention` runs a prompt's tokens
  through the same kernel, two launches a layer;
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
    TorchAttention,
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


class TritonPromptAttention:
    """Prompt rows (B, T) in slots (B,): each token is a row of the decode-attention kernel over its
    own slot, every row's key/value written in one launch before the rows attend in another
    (`prompt_attention`); padding (position < 0) writes nothing and outputs zeros."""

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
        rows = slots if slots is not None else torch.arange(b, device=positions.device)
        return AttentionInputs(
            positions.reshape(-1),
            stack.rope_cos,
            stack.rope_sin,
            None,
            None,
            rows[:, None].expand(b, t).clone().reshape(-1),  # each token's slot, a tensor of its own
            slots,
            kv_len,
        )

    def attend(self, attention: Attention, qkv: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        cache = attention.cache()
        out = torch.ops.csm_serve.prompt_attention(
            _rows(qkv),
            inputs.positions,
            inputs.rows,
            inputs.cos,
            inputs.sin,
            cache.k,
            cache.v,
            attention.n_heads,
            attention.n_kv_heads,
        )
        return out.view(*qkv.shape[:-1], out.shape[-1])


class TritonProjections:
    """Rows (..., D) through the fused matmuls: norm prologue, SwiGLU and residual epilogues. A
    decode step's rows are (B, D); a prompt's (B, T, D) go through as B * T rows."""

    def norm_linear(self, x: torch.Tensor, norm: RMSNorm, weight: torch.Tensor) -> torch.Tensor:
        out = torch.ops.csm_serve.fused_linear(_rows(x), weight, norm.weight, None, norm.eps, False)
        return out.view(*x.shape[:-1], out.shape[-1])

    def linear_add(self, x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        out = torch.ops.csm_serve.fused_linear(_rows(x), weight, None, _rows(residual), 0.0, False)
        return out.view(*x.shape[:-1], out.shape[-1])

    def norm_gate_up(self, x: torch.Tensor, norm: RMSNorm, weight: torch.Tensor) -> torch.Tensor:
        out = torch.ops.csm_serve.fused_linear(_rows(x), weight, norm.weight, None, norm.eps, True)
        return out.view(*x.shape[:-1], out.shape[-1])


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(..., D) as (rows, D): a view for a decode step's (B, D) and a contiguous prompt's (B, T, D)."""
    return x if x.dim() == 2 else x.reshape(-1, x.shape[-1])


FUSED_ATTENTION = Backend(TritonDecodeAttention(), TorchProjections())
"""The Triton decode attention, cuBLAS projections."""

def fused_qkv_attention(attention: Attention, norm: RMSNorm, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
    """A decode step's QKV projection and attention through `fused_qkv_attention`: one launch for
    both at the smallest batches (`fused_linear.FOLD_ATTENTION_MAX_ROWS`), else the two kernels."""
    cache = attention.cache()
    out = torch.ops.csm_serve.fused_qkv_attention(
        _rows(x),
        attention.wqkv.weight,
        norm.weight,
        norm.eps,
        inputs.positions,
        inputs.cos,
        inputs.sin,
        cache.k,
        cache.v,
        attention.n_heads,
        attention.n_kv_heads,
    )
    return out.view(*x.shape[:-1], out.shape[-1])


FUSED = Backend(TritonDecodeAttention(), TritonProjections(), fused_qkv_attention)
"""The Triton decode attention and the fused Triton projections (the attention inside the QKV
projection's launch at the smallest batches)."""

FUSED_PREFILL = Backend(TorchAttention(), TritonProjections())
"""Prompts: SDPA over the slot cache (many tokens a row), the fused Triton projections."""

FUSED_PREFILL_KERNELS = Backend(TritonPromptAttention(), TritonProjections())
"""Prompts: the decode-attention kernel over each token's slot, the fused Triton projections."""
