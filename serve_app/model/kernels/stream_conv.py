"""A streaming causal conv over channels-last activations in one Triton kernel: the SEANet's convs.

In the streaming Mimi decode, each SEANet conv ran as an ELU pass, a `cat` of the slot's left context
in front of its input, cuDNN (which converts (B, C, T) to channels-last and back around every call)
and, in a residual block, a separate add: about a dozen passes over the activations per conv, where
the convs' arithmetic is small. Here one program computes a (rows × output channels) tile of

    out[b, t, :] = sum_k act(in[b, t + k * dilation, :]) @ W[k] (+ bias) (+ residual[b, t, :])

where `in` is the slot's `context` stored input rows followed by the new rows x: the rows t .. t +
(K - 1) * dilation of a channels-last sequence lie in memory one after another, so the window is
read in place (an implicit im2col, with no copy), from the state tensor through the slot index for
the first `context` rows and from x after. `act` is the ELU that precedes every SEANet conv, applied
as the inputs are loaded; the bias and a residual block's shortcut are added before the one store.

A transposed conv whose kernel spans b strides is the same product: its output block l (stride
samples × C_out channels, contiguous in a channels-last output) is a window of b inputs times the
taps (`serve_app.model.mimi_stream_seanet.window_taps`), so it runs here with K = b.

Numerics: products accumulate in fp32 (tensor cores on bf16 inputs); the ELU is computed in fp32 and
rounded to the input dtype before the product, as the unfused ELU's output is.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from serve_app.model.kernels.keys import settle


@triton.jit
def _stream_conv_kernel(
    x_ptr,  # (B, T, C_in) new input rows, channels contiguous
    state_ptr,  # (S, CONTEXT, C_in) each slot's last input rows
    slots_ptr,  # (B,) int64
    w_ptr,  # (K * C_in, N): row k * C_in + c is window entry k (oldest first), input channel c
    bias_ptr,  # (N,) or a dummy
    res_ptr,  # (B, T, N) or a dummy
    out_ptr,  # (B, T, N)
    rows_total,
    length,
    n,
    k_total,
    context,
    x_sb,
    x_st,
    s_ss,
    s_st,
    r_sb,
    r_st,
    o_sb,
    o_st,
    alpha,
    C_IN: tl.constexpr,  # a constant: the window's (tap, channel) split divides by it
    DILATION: tl.constexpr,
    ELU_IN: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < rows_total
    col_ok = cols < n
    b = tl.where(row_ok, rows // length, 0)
    t = rows % length
    slot = tl.load(slots_ptr + b, mask=row_ok, other=0)
    dtype = w_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, k_total, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < k_total
        tap = kk // C_IN
        channel = kk % C_IN
        r = t[:, None] + tap[None, :] * DILATION  # row of the context-then-x sequence
        ok = row_ok[:, None] & k_ok[None, :]
        from_state = r < context
        from_x = tl.load(
            x_ptr + b[:, None] * x_sb + (r - context) * x_st + channel[None, :],
            mask=ok & (r >= context),
            other=0.0,
        )
        stored = tl.load(
            state_ptr + slot[:, None] * s_ss + r * s_st + channel[None, :], mask=ok & from_state, other=0.0
        )
        a = tl.where(from_state, stored, from_x)
        if ELU_IN:
            af = a.to(tl.float32)
            a = tl.where(af > 0, af, alpha * (tl.exp(af) - 1.0)).to(dtype)
        w = tl.load(w_ptr + kk[:, None] * n + cols[None, :], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.dot(a.to(dtype), w, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    done = row_ok[:, None] & col_ok[None, :]
    if HAS_RES:
        res = tl.load(res_ptr + b[:, None] * r_sb + t[:, None] * r_st + cols[None, :], mask=done, other=0.0)
        acc += res.to(tl.float32)
    tl.store(
        out_ptr + b[:, None] * o_sb + t[:, None] * o_st + cols[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=done,
    )


def stream_conv(
    x: torch.Tensor,
    state: torch.Tensor,
    slots: torch.Tensor,
    weight: torch.Tensor,
    *,
    dilation: int = 1,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    elu_alpha: float | None = None,
) -> torch.Tensor:
    """The causal conv of x (B, T, C_in, channels contiguous) after each slot's stored rows
    `state[slots]` (S, (K - 1) * dilation, C_in), with `weight` (K * C_in, N) as `window_taps` lays it
    out, the ELU (`elu_alpha`) applied to every input row first, then `bias` (N) and `residual`
    (B, T, N) added. Returns (B, T, N) in x's dtype. The state is read, not updated."""
    batch, length, c_in = x.shape
    k_total, n = weight.shape
    taps = k_total // c_in
    context = (taps - 1) * dilation
    if k_total % c_in or state.shape[1:] != (context, c_in):
        raise ValueError(
            f"weight {tuple(weight.shape)} and state {tuple(state.shape)} do not fit {c_in} input "
            f"channels with dilation {dilation}"
        )
    if x.stride(2) != 1 or weight.stride(1) != 1 or not weight.is_contiguous():
        raise ValueError("x needs contiguous channels and weight must be contiguous")
    out = torch.empty(batch, length, n, dtype=x.dtype, device=x.device)
    if batch == 0 or length == 0:
        return out
    if residual is not None and (residual.shape != out.shape or residual.stride(2) != 1):
        raise ValueError(f"residual {tuple(residual.shape)} must be {tuple(out.shape)}, channels contiguous")
    state_view = state if state.numel() else x  # a conv without context never reads it
    res = residual if residual is not None else out
    block_n = max(16, min(128, triton.next_power_of_2(n)))
    # Narrow outputs (the full-rate convs: many rows, few channels) take taller tiles, so each
    # program loads the weight once for more rows.
    block_m = 128 if n <= 64 else 64
    # 8 warps: compiled for sm_90 at the full-size Mimi's convs, 4 warps took every register and
    # spilled up to 1.4 KB in the convs that add a shortcut; 8 spill nothing
    # (`benchmarks/results/2026-12-04-cpu-kernels-sm90-triton-3.6-{4,8}-warps.json`).
    grid = (triton.cdiv(batch * length, block_m), triton.cdiv(n, block_n))
    _stream_conv_kernel[grid](
        x,
        state_view,
        slots,
        weight,
        bias if bias is not None else weight,
        res,
        out,
        batch * length,
        length,
        n,
        k_total,
        context,
        x.stride(0),
        x.stride(1),
        state.stride(0) if state.numel() else 0,
        state.stride(1) if state.numel() else 0,
        res.stride(0),
        res.stride(1),
        out.stride(0),
        out.stride(1),
        float(elu_alpha if elu_alpha is not None else 1.0),
        C_IN=c_in,
        DILATION=dilation,
        ELU_IN=elu_alpha is not None,
        HAS_BIAS=bias is not None,
        HAS_RES=residual is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=32 if c_in >= 32 else 16,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=8,
    )
    return out


settle(globals())  # every key the same in every process (see `keys`)
