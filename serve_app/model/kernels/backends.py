"""The Triton twins of the eager block backends (`serve_app.model.llama`), for one-token decode steps.

In a decode step every row is one new token in its own cache slot (row b = slot b), and the step is
bound by kernel count, not bytes:
- `TritonDecodeAttention`: RoPE, the cache write and grouped-query attention over each row's own
  prefix in one kernel per layer (`decode_attention`);
- `TritonProjections`: the four matmuls of a layer with RMSNorm, SwiGLU and the residual adds inside
  them (`fused_linear`), so a layer is five launches (plus a split-K reduce for the long matmuls);
- `CublasProjections`: cuBLAS's matmuls with the norm and the activation one Triton kernel each
  (`norm_act`) and the residual added in the matmul's epilogue (`addmm`), eight launches a layer,
  for large batches, where cuBLAS's matmuls are the faster ones (`FastStep.linear_max_batch`).

Importing this module registers the `csm_serve::` custom ops; it needs Triton.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import serve_app.model.kernels.decode_attention  # registers csm_serve::decode_attention
import serve_app.model.kernels.fused_linear  # registers csm_serve::fused_linear
import serve_app.model.kernels.norm_act  # noqa: F401 - registers csm_serve::rms_norm, ::silu_mul
from serve_app.model.kernels import attend_project  # registers csm_serve::attend_project
from serve_app.model.llama import (
    Attention,
    AttentionInputs,
    Backend,
    RMSNorm,
    Transformer,
)

ATTEND_PROJECT_MAX_ROWS = 0
"""Batches of up to this many rows, over key windows of up to `attend_project.MAX_KEYS` (the
depth decoder's), attend and run the output projection in one kernel (`attend_project`); 0: never.
Off until it is measured against the two launches it replaces."""


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

    def attend_project(
        self, attention: Attention, qkv: torch.Tensor, inputs: AttentionInputs, residual: torch.Tensor
    ) -> torch.Tensor | None:
        if qkv.shape[0] > ATTEND_PROJECT_MAX_ROWS or inputs.kv_len > attend_project.MAX_KEYS:
            return None
        cache = attention.cache()
        return torch.ops.csm_serve.attend_project(
            qkv,
            inputs.positions,
            inputs.cos,
            inputs.sin,
            cache.k,
            cache.v,
            attention.wo.weight,
            residual,
            attention.n_heads,
            attention.n_kv_heads,
            inputs.kv_len,
        )


class TritonProjections:
    """Rows (B, D) through the fused matmuls: norm prologue, SwiGLU and residual epilogues."""

    def norm_linear(self, x: torch.Tensor, norm: RMSNorm, weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.csm_serve.fused_linear(x, weight, norm.weight, None, norm.eps, False)

    def linear_add(self, x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return torch.ops.csm_serve.fused_linear(x, weight, None, residual, 0.0, False)

    def norm_gate_up(self, x: torch.Tensor, norm: RMSNorm, weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.csm_serve.fused_linear(x, weight, norm.weight, None, norm.eps, True)


class CublasProjections:
    """Rows (B, D) through cuBLAS's matmuls, the norm and the activation one kernel each beside them
    and the residual in the matmul's epilogue (beta = 1), instead of eager PyTorch's separate ops."""

    def norm_linear(self, x: torch.Tensor, norm: RMSNorm, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.ops.csm_serve.rms_norm(x, norm.weight, norm.eps), weight)

    def linear_add(self, x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return torch.addmm(residual, x, weight.t())

    def norm_gate_up(self, x: torch.Tensor, norm: RMSNorm, weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.csm_serve.silu_mul(self.norm_linear(x, norm, weight))


FUSED_ATTENTION = Backend(TritonDecodeAttention(), CublasProjections())
"""The Triton decode attention, cuBLAS projections."""

FUSED = Backend(TritonDecodeAttention(), TritonProjections())
"""The Triton decode attention and the fused Triton projections."""
