"""Streaming versions of Mimi's convolution layers, with per-slot state.

transformers' `MimiConv1d` / `MimiConvTranspose1d` only see whole sequences. Decoding chunk by chunk
gives the same samples when each causal conv remembers the last `padding_total` inputs it saw (its
left context) and each transposed conv the last `kernel / stride - 1` inputs (the earlier inputs its
next outputs still depend on). Every op keeps that state for `max_streams` streams
in one preallocated tensor; a call gathers the rows of the streams it decodes and writes them back.

A call may be ragged: every row gets the same number of input samples, but only the first
`valid[row]` of them are real (`RowLengths`) and the rest are padding. Every op is causal, so real
outputs never depend on padding; only the state each op keeps (its last inputs) must be taken where
the row's real input ends, not where the padded input does.

All ops call the wrapped module's own `nn.Conv1d` / weights, so no parameter is copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from transformers.models.mimi.modeling_mimi import MimiConv1d, MimiConvTranspose1d, MimiResnetBlock

_STATELESS = (nn.ELU, nn.Identity)
"""Pointwise modules that need no state and run unchanged."""


@dataclass(frozen=True)
class RowLengths:
    """The real frames of each row of a ragged call: `frames` (B,) long, of `total` frames per row."""

    frames: torch.Tensor
    total: int

    def valid(self, length: int) -> torch.Tensor:
        """(B,) real samples of each row of a signal `length` samples long (every layer's signal
        has the same number of samples per frame in each row)."""
        return self.frames * (length // self.total)


def window(x: torch.Tensor, start: torch.Tensor, offsets: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x[b, ..., start[b] + offsets, ...] along `dim`, for each row b: one gather (offsets: an
    `arange(width)` kept on x's device, so no kernel builds it per call)."""
    dim %= x.dim()
    shape = [1] * x.dim()
    shape[0], shape[dim] = -1, offsets.numel()
    index = start.view(-1, *([1] * (x.dim() - 1))) + offsets.view(shape[1:] if dim else [-1])
    size = list(x.shape)
    size[dim] = offsets.numel()
    return x.gather(dim, index.view(shape).expand(size))


class StreamOp(Protocol):
    """One layer of a streaming stack: `(x, slots, fresh, rows) -> y` with y as long as x times its
    upsampling; `rows`: the real lengths of a ragged call (None: every sample is real)."""

    def __call__(
        self, x: torch.Tensor, slots: torch.Tensor, fresh: torch.Tensor, rows: RowLengths | None
    ) -> torch.Tensor: ...


class StreamingConv1d:
    """Causal stride-1 `MimiConv1d` that keeps its left context per slot.

    In the full decode the first chunk is left-padded with zeros (`pad_mode="constant"`) or with its
    first sample (`"replicate"`); a reset slot starts from the same padding. Other pad modes (reflect)
    look at future samples and cannot stream exactly, so they are refused.
    """

    def __init__(self, layer: MimiConv1d, max_streams: int, device: torch.device, dtype: torch.dtype):
        if not layer.causal:
            raise ValueError("streaming needs causal convolutions (config.use_causal_conv=True)")
        if layer.conv.stride[0] != 1:
            raise ValueError("streaming decode supports only stride-1 MimiConv1d layers")
        if layer.pad_mode not in ("constant", "replicate"):
            raise ValueError(f"pad_mode {layer.pad_mode!r} cannot be streamed exactly")
        self.layer = layer
        self.replicate = layer.pad_mode == "replicate"
        self.context = int(layer.padding_total)
        self.state = torch.zeros(max_streams, layer.in_channels, self.context, device=device, dtype=dtype)
        self.offsets = torch.arange(self.context, device=device)

    def reset(self, slots: torch.Tensor) -> None:
        """Clear the state of `slots` (a device index tensor): one kernel, no host sync."""
        self.state.index_fill_(0, slots, 0)

    def __call__(
        self, x: torch.Tensor, slots: torch.Tensor, fresh: torch.Tensor, rows: RowLengths | None
    ) -> torch.Tensor:
        if self.context == 0:
            return self.layer.conv(x)
        prev = self.state[slots]
        if self.replicate:
            prev = torch.where(fresh[:, None, None], x[..., :1].expand_as(prev), prev)
        padded = torch.cat([prev, x], dim=-1)
        # The last `context` real inputs: padded[..., real : real + context] ends at the last one.
        if rows is None:
            self.state[slots] = padded[..., -self.context :]
        else:
            self.state[slots] = window(padded, rows.valid(x.shape[-1]), self.offsets)
        return self.layer.conv(padded)


def polyphase_conv_transpose1d(
    padded: torch.Tensor, weight: torch.Tensor, stride: int, groups: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """The finished outputs of `F.conv_transpose1d(x, weight, bias, stride, groups=groups)` for
    inputs `padded[..., blocks - 1:]` (L of them), given the `blocks - 1 = kernel / stride - 1`
    inputs before them: (B, C_out, L * stride).

    With kernel = blocks * stride, output block m (`stride` samples) is the sum over j < blocks of
    input m - j times the weight's taps j * stride ... (j + 1) * stride - 1: a causal convolution
    over the inputs with `stride` output phases per channel. So it is one matmul over the stacked
    shifted inputs (a broadcast multiply for the depthwise upsampler) and one transpose that
    interleaves the phases, where cuDNN would run a backward-data convolution (milliseconds per call
    even on a few frames) and an overlap-add would build a `blocks`-times larger tensor."""
    c_in, c_out_per_group, kernel = weight.shape
    blocks = kernel // stride
    batch, _, total = padded.shape
    length = total - (blocks - 1)
    # (B, blocks, C_in, L): shifted[:, j, :, m] is input m - j.
    shifted = torch.stack([padded[..., blocks - 1 - j : total - j] for j in range(blocks)], dim=1)
    if groups == 1:
        taps = weight.view(c_in, c_out_per_group, blocks, stride).permute(1, 3, 2, 0)
        phases = taps.reshape(c_out_per_group * stride, blocks * c_in) @ shifted.view(batch, -1, length)
        c_out = c_out_per_group
    else:  # depthwise
        phases = torch.einsum("bjcl,cjp->bcpl", shifted, weight.view(c_in, blocks, stride))
        c_out = c_in
    phases = phases.view(batch, c_out, stride, length)
    if bias is not None:
        phases = phases + bias[:, None, None]
    return phases.transpose(2, 3).reshape(batch, c_out, length * stride)


class StreamingConvTranspose1d:
    """Causal `MimiConvTranspose1d` that emits only finished samples.

    With `trim_right_ratio == 1` the full decode keeps the first `T * stride` samples of T inputs,
    and exactly those are final once the T-th input is in. Each output block depends on the last
    `kernel / stride` inputs (`polyphase_conv_transpose1d`), so a stream keeps its last
    `kernel / stride - 1` inputs as its state, like a causal conv. Other trim ratios drop samples at
    the start and would shift every chunk boundary.
    """

    def __init__(
        self, layer: MimiConvTranspose1d, max_streams: int, device: torch.device, dtype: torch.dtype
    ):
        conv = layer.conv
        if not layer.causal or layer.padding_left != 0:
            raise ValueError("streaming needs causal transposed convs with trim_right_ratio=1.0")
        if conv.padding[0] != 0 or conv.output_padding[0] != 0 or conv.dilation[0] != 1:
            raise ValueError("unexpected padding/dilation on a MimiConvTranspose1d")
        self.conv = conv
        self.stride = conv.stride[0]
        kernel, groups = conv.kernel_size[0], conv.groups
        depthwise = groups == conv.in_channels == conv.out_channels
        if kernel % self.stride or not (groups == 1 or depthwise):
            raise ValueError(
                "streaming needs transposed convs, dense or depthwise, with kernel a multiple of stride"
            )
        self.context = kernel // self.stride - 1
        self.state = torch.zeros(max_streams, conv.in_channels, self.context, device=device, dtype=dtype)
        self.offsets = torch.arange(self.context, device=device)

    def reset(self, slots: torch.Tensor) -> None:
        self.state.index_fill_(0, slots, 0)

    def __call__(
        self, x: torch.Tensor, slots: torch.Tensor, fresh: torch.Tensor, rows: RowLengths | None
    ) -> torch.Tensor:
        padded = torch.cat([self.state[slots], x], dim=-1) if self.context else x
        if self.context and rows is None:
            self.state[slots] = padded[..., -self.context :]
        elif self.context:  # the last real inputs of each row
            self.state[slots] = window(padded, rows.valid(x.shape[-1]), self.offsets)
        conv = self.conv
        return polyphase_conv_transpose1d(padded, conv.weight, self.stride, conv.groups, conv.bias)


class StreamingResnetBlock:
    """`MimiResnetBlock`: streaming branch plus (identity or 1x1 conv) shortcut."""

    def __init__(self, block: list[StreamOp], shortcut: StreamOp):
        self.block = block
        self.shortcut = shortcut

    def __call__(
        self, x: torch.Tensor, slots: torch.Tensor, fresh: torch.Tensor, rows: RowLengths | None
    ) -> torch.Tensor:
        h = x
        for op in self.block:
            h = op(h, slots, fresh, rows)
        return self.shortcut(x, slots, fresh, rows) + h


def _stateless(module: nn.Module) -> StreamOp:
    return lambda x, slots, fresh, rows: module(x)


class StreamingStack:
    """A sequence of Mimi conv layers (the SEANet decoder, or the frame-rate upsample) made streaming.

    `stateful` lists every op with per-slot state so `reset(slots)` can clear them all.
    """

    def __init__(self, layers: list[nn.Module], max_streams: int, device: torch.device, dtype: torch.dtype):
        self._args = (max_streams, device, dtype)
        self.stateful: list[StreamingConv1d | StreamingConvTranspose1d] = []
        self.ops = [self._wrap(layer) for layer in layers]

    def _wrap(self, layer: nn.Module) -> StreamOp:
        if isinstance(layer, MimiConv1d):
            op: StreamingConv1d | StreamingConvTranspose1d = StreamingConv1d(layer, *self._args)
        elif isinstance(layer, MimiConvTranspose1d):
            op = StreamingConvTranspose1d(layer, *self._args)
        elif isinstance(layer, MimiResnetBlock):
            return StreamingResnetBlock([self._wrap(m) for m in layer.block], self._wrap(layer.shortcut))
        elif isinstance(layer, _STATELESS):
            return _stateless(layer)
        else:
            raise TypeError(f"no streaming rule for layer {type(layer).__name__}")
        self.stateful.append(op)
        return op

    def reset(self, slots: torch.Tensor) -> None:
        for op in self.stateful:
            op.reset(slots)

    def __call__(
        self, x: torch.Tensor, slots: torch.Tensor, fresh: torch.Tensor, rows: RowLengths | None = None
    ) -> torch.Tensor:
        for op in self.ops:
            x = op(x, slots, fresh, rows)
        return x
