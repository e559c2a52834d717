"""Decode-step projections with their neighbours fused in: one Triton kernel per matmul.

In a decode step every row is one token, so each projection is a skinny, memory-bound matmul, and
the step is bound by kernel count: per layer, RMSNorm, the SwiGLU activation and the residual adds
are six more launches around the four matmuls. Here they ride inside the matmul kernels:

- RMSNorm prologue, `rmsnorm(x) @ W^T`: the norm is a per-row scale, so each x tile is multiplied
  by the norm weight on its way into the dot, the row's sum of squares accumulates in the same
  pass, and 1 / rms scales the finished rows.
- SwiGLU prologue, `(silu(gate) * up) @ W^T` for x = [gate | up] (the fused gate/up projection).
- Residual epilogue, `residual + x @ W^T`.

So a layer is four launches plus attention. W may be any 2-D view (N, K) (the depth decoder's
per-codebook heads are (K, N) tensors read through a transposed view).

Numerics: fp32 accumulation; SwiGLU and the residual add round where the eager model rounds; the
norm rounds once (x * weight) instead of twice (x / rms, then * weight): within bf16 tolerance of
the reference, checked by the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _linear_kernel(
    x_ptr,  # (M, K) or (M, 2K) for SwiGLU, unit stride along K
    w_ptr,  # (N, K) view: element (n, k) at n * stride_wn + k * stride_wk
    out_ptr,  # (M, N)
    res_ptr,  # (M, N) residual (RESIDUAL)
    g_ptr,  # (K,) RMSNorm weight (NORM)
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_wk,
    stride_om,
    stride_rm,
    eps,
    NORM: tl.constexpr,
    SWIGLU: tl.constexpr,
    RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    col_ok = cols < N
    dtype = w_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    sumsq = tl.zeros((BLOCK_M,), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + ks
        k_ok = k < K
        x_mask = row_ok[:, None] & k_ok[None, :]
        x_offs = rows[:, None] * stride_xm + k[None, :]
        a = tl.load(x_ptr + x_offs, mask=x_mask, other=0.0)
        if NORM:
            af = a.to(tl.float32)
            sumsq += tl.sum(af * af, axis=1)
            g = tl.load(g_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
            a = (af * g[None, :]).to(dtype)
        if SWIGLU:
            up = tl.load(x_ptr + x_offs + K, mask=x_mask, other=0.0).to(tl.float32)
            gate = a.to(tl.float32)
            act = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32)
            a = (act * up).to(dtype)
        w = tl.load(
            w_ptr + cols[None, :] * stride_wn + k[:, None] * stride_wk,
            mask=col_ok[None, :] & k_ok[:, None],
            other=0.0,
        )
        acc += tl.dot(a.to(dtype), w, input_precision=PRECISION)
    if NORM:
        acc = acc * (1.0 / tl.sqrt(sumsq / K + eps))[:, None]
    out_mask = row_ok[:, None] & col_ok[None, :]
    out = acc.to(out_ptr.dtype.element_ty)
    if RESIDUAL:
        r = tl.load(res_ptr + rows[:, None] * stride_rm + cols[None, :], mask=out_mask, other=0.0)
        out = (r.to(tl.float32) + out.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], out, mask=out_mask)


SMS_TARGET = 132
"""Programs the grid should reach before tiles grow (an H100/H200 has 132 SMs)."""


def tile_config(m: int, n: int, k: int) -> dict[str, int]:
    """Tile sizes for an (m x k) @ (k x n) decode matmul: the smallest row tile that holds the
    batch (tensor-core tiles start at 16 rows), then the widest column tile that still gives
    every SM a program (narrow tiles otherwise; re-reading x per program is cheap next to W)."""
    block_m = min(64, max(16, triton.next_power_of_2(m)))
    row_tiles = triton.cdiv(m, block_m)
    block_n = 16
    for candidate in (128, 64, 32):
        if row_tiles * triton.cdiv(n, candidate) >= SMS_TARGET and candidate * block_m <= 128 * 64:
            block_n = candidate
            break
    block_k = 256 if block_m <= 16 else (128 if block_m <= 32 else 64)
    return {
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "BLOCK_K": min(block_k, max(16, triton.next_power_of_2(k))),
        "num_warps": 4,
        "num_stages": 4 if block_m <= 32 else 3,
    }


CONFIG_OVERRIDES: dict[tuple[int, int, int], dict[str, int]] = {}
"""Per-(m, n, k) tile choices that beat `tile_config` (filled by tuning on the target GPU)."""


def launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    swiglu: bool = False,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Run the kernel; see `fused_linear`."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    m = x.shape[0]
    n, k = weight.shape
    if x.shape[1] != (2 * k if swiglu else k):
        raise ValueError(f"x has {x.shape[1]} columns for a weight of {k} (swiglu={swiglu})")
    out = torch.empty(m, n, dtype=out_dtype or x.dtype, device=x.device)
    if m == 0:
        return out
    cfg = CONFIG_OVERRIDES.get((m, n, k)) or tile_config(m, n, k)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(m, cfg["BLOCK_M"]))
    res = residual if residual is not None else out
    _linear_kernel[grid](
        x,
        weight,
        out,
        res,
        norm_weight if norm_weight is not None else x,
        m,
        n,
        k,
        x.stride(0),
        weight.stride(0),
        weight.stride(1),
        out.stride(0),
        res.stride(0),
        eps,
        NORM=norm_weight is not None,
        SWIGLU=swiglu,
        RESIDUAL=residual is not None,
        PRECISION="ieee" if weight.dtype == torch.float32 else "tf32",
        **cfg,
    )
    return out


@torch.library.custom_op("csm_serve::fused_linear", mutates_args=())
def fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: torch.Tensor | None,
    residual: torch.Tensor | None,
    eps: float,
    swiglu: bool,
) -> torch.Tensor:
    """(M, N) = [residual +] prologue(x) @ weight^T for x (M, K) and weight (N, K) (any strides).

    prologue: RMSNorm with `norm_weight` and `eps` when given; with `swiglu`, x is (M, 2K) = [gate |
    up] and the prologue is silu(gate) * up. The output has x's dtype."""
    return launch(x, weight, norm_weight, residual, eps, swiglu)


@fused_linear.register_fake
def _(x, weight, norm_weight, residual, eps, swiglu):  # type: ignore[no-untyped-def]
    return x.new_empty(x.shape[0], weight.shape[0])
