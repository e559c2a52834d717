"""RMSNorm and SwiGLU's activation as one Triton kernel each: the elementwise neighbours of cuBLAS's
matmuls in large decode batches (`backends.CublasProjections`).

Eager PyTorch runs an RMSNorm as six kernels (cast, square, mean, rsqrt, two multiplies) and
silu(gate) * up as two; in a CUDA-graphed decode step each is a launch of its own. These kernels
round where the eager ops round (the normalised rows to the activation dtype before the weight
multiplies them; silu's output before the product), so they reproduce `llama.RMSNorm` and
`F.silu(gate) * up` up to the last bit of the fp32 arithmetic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, D, stride_x, stride_o, eps, BLOCK_D: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    scale = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    h = (x * scale).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (w * h).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, N, stride_g, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    gate = tl.load(gu_ptr + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + row * stride_g + N + cols, mask=mask, other=0.0).to(tl.float32)
    silu = (gate * tl.sigmoid(gate)).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (silu * up).to(out_ptr.dtype.element_ty), mask=mask)


SILU_BLOCK = 1024
"""Columns per program of the activation kernel (a 256-row depth batch: 2048 programs)."""


@torch.library.custom_op("csm_serve::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x / rms(x)) over the last dimension of x (M, D), as `llama.RMSNorm` computes it."""
    if x.dim() != 2 or x.stride(-1) != 1:
        raise ValueError(f"rms_norm takes rows (M, D) with unit column stride, got {tuple(x.shape)}")
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    m, d = x.shape
    if m:
        _rms_norm_kernel[(m,)](
            x, weight, out, d, x.stride(0), out.stride(0), eps, BLOCK_D=triton.next_power_of_2(d)
        )
    return out


@rms_norm.register_fake
def _(x, weight, eps):  # type: ignore[no-untyped-def]
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("csm_serve::silu_mul", mutates_args=())
def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up (M, 2N), gate columns first: (M, N)."""
    if gate_up.dim() != 2 or gate_up.stride(-1) != 1 or gate_up.shape[1] % 2:
        raise ValueError(f"silu_mul takes rows (M, 2N) with unit column stride, got {tuple(gate_up.shape)}")
    m, n = gate_up.shape[0], gate_up.shape[1] // 2
    out = gate_up.new_empty(m, n)
    if m and n:
        grid = (m, triton.cdiv(n, SILU_BLOCK))
        _silu_mul_kernel[grid](gate_up, out, n, gate_up.stride(0), out.stride(0), BLOCK=SILU_BLOCK)
    return out


@silu_mul.register_fake
def _(gate_up):  # type: ignore[no-untyped-def]
    return gate_up.new_empty(gate_up.shape[0], gate_up.shape[1] // 2)
