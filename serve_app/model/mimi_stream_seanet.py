"""Streaming versions of Mimi's convolution layers, with per-slot state.

transformers' `MimiConv1d` / `MimiConvTranspose1d` only see whole sequences. Decoding chunk by chunk
gives the same samples when each causal conv remembers the last `padding_total` inputs it saw (its
left context) and each transposed conv remembers its last `kernel / stride - 1` input frames, from
which the next chunk's output blocks are computed whole. Every op keeps that state for `max_streams`
streams in one preallocated tensor; a call gathers the rows of the streams it decodes and writes them
back.

The convs call the wrapped module's own `nn.Conv1d`; a transposed conv keeps its weight rearranged
for the blocks' matmul (`window_taps`, made once: about 20 MB in bf16 for all of Mimi's).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from transformers.models.mimi.modeling_mimi import MimiConv1d, MimiConvTranspose1d, MimiResnetBlock

SEANET_KERNEL: bool | None = None
"""Whether streaming Mimi decoders built from now on run the SEANet channels-last through one Triton
kernel per conv (`mimi_stream_seanet_kernel.KernelSeanet`, where the layers allow) rather than
`StreamingStack`: None (the default) where Triton compiles (CUDA), True wherever Triton runs (its
CPU interpreter too, as the tests use it), False never. On an H200 (bf16, CUDA graphs) the kernel
decoded 128 streams' 1-frame chunks in 1.54 ms against the stack's 2.11, 256 streams' 8-frame chunks in
8.39 against 14.49, one stream's frame in 0.90 against 0.95
(`benchmarks/results/2026-12-05-0142-nvidia-h200-mimi-seanet-kernel.json`)."""


def seanet_kernel_on(device: torch.device) -> bool:
    """Whether `SEANET_KERNEL` asks for the kernel on `device` (Triton must still run there)."""
    return device.type == "cuda" if SEANET_KERNEL is None else SEANET_KERNEL

_STATELESS = (nn.ELU, nn.Identity)
"""Pointwise modules that need no state and run unchanged."""


class StreamOp(Protocol):
    """One layer of a streaming stack: `(x, slots, fresh) -> y` with y as long as x times its upsampling."""

    def __call__(self, x: torch.Tensor, slots: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor: ...


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

    def reset(self, slots: torch.Tensor) -> None:
        """Clear the state of `slots` (a device index tensor): one kernel, no host sync."""
        self.state.index_fill_(0, slots, 0)

    def __call__(self, x: torch.Tensor, slots: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        if self.context == 0:
            return self.layer.conv(x)
        prev = self.state[slots]
        if self.replicate:
            prev = torch.where(fresh[:, None, None], x[..., :1].expand_as(prev), prev)
        padded = torch.cat([prev, x], dim=-1)
        self.state[slots] = padded[..., -self.context :]
        return self.layer.conv(padded)


def transposed_conv_blocks(
    x: torch.Tensor, taps: torch.Tensor, stride: int, depthwise: bool, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The output blocks of a transposed conv whose kernel spans `b` strides, from its inputs alone.

    cuDNN runs Mimi's transposed convs as a backward-data convolution that costs milliseconds per
    call even on a few frames; a matmul per output block is the same sum in a few small kernels.

    x: (B, C_in, b - 1 + L), the b - 1 inputs before the L new ones first. Output block l (`stride`
    samples) is the sum over i < b of input l + i times taps block b - 1 - i, so each block is one
    matmul row over a window of b inputs (dense) or a b-term product per channel (depthwise), with no
    overlap-add pass over the output. taps: `window_taps(weight, stride, depthwise)`; a bias (C_out)
    is added in the matmul. Returns (B, C_out, L * stride)."""
    batch, c_in, n = x.shape
    if depthwise:  # taps (C, b, stride); windows (B, C, L, b), oldest input first
        blocks = taps.shape[1]
        length = n - blocks + 1
        out = (x.unfold(-1, blocks, 1)[..., None] * taps[:, None]).sum(-2)  # (B, C, L, stride)
        out = out.reshape(batch, c_in, length * stride)
        return out if bias is None else out + bias[:, None]
    blocks = taps.shape[0] // c_in  # taps (b * C_in, C_out * stride)
    length = n - blocks + 1
    rows = x.transpose(1, 2)  # (B, b - 1 + L, C_in)
    windows = torch.cat([rows[:, i : i + length] for i in range(blocks)], dim=-1).view(batch * length, -1)
    c_out = taps.shape[1] // stride
    if bias is None:
        out = windows @ taps
    else:  # output column co * stride + t carries channel co's bias
        out = torch.addmm(bias.repeat_interleave(stride), windows, taps)
    return out.view(batch, length, c_out, stride).permute(0, 2, 1, 3).reshape(batch, c_out, length * stride)


def dense_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped transposed conv's weight (C_in, C_out / groups, K) as the dense (C_in, C_out, K) one
    with zeros between the groups: the same conv, so grouped layers share the dense matmul."""
    if groups == 1:
        return weight
    c_in, per_group, kernel = weight.shape
    dense = weight.new_zeros(c_in, per_group * groups, kernel)
    for g, block in enumerate(weight.split(c_in // groups)):
        dense[g * block.shape[0] : (g + 1) * block.shape[0], g * per_group : (g + 1) * per_group] = block
    return dense


def window_taps(
    weight: torch.Tensor, stride: int, depthwise: bool, channels_last: bool = False
) -> torch.Tensor:
    """A transposed conv's weight (C_in, C_out, b * stride) arranged for `transposed_conv_blocks`:
    window entry i (the input b - 1 - i strides back) meets taps block b - 1 - i. Dense columns are
    channel-major (co * stride + t), or with `channels_last` sample-major (t * C_out + co), so that
    a block's output rows lie channels-last."""
    c_in, c_out, kernel = weight.shape
    blocks = kernel // stride
    if depthwise:
        return weight[:, 0].reshape(c_in, blocks, stride).flip(1).contiguous()
    per_block = weight.reshape(c_in, c_out, blocks, stride).permute(2, 0, 1, 3)  # (b, C_in, C_out, s)
    if channels_last:
        per_block = per_block.transpose(2, 3)  # (b, C_in, s, C_out)
    return per_block.flip(0).reshape(blocks * c_in, c_out * stride).contiguous()


def transposed_conv_blocks_of(layer: MimiConvTranspose1d) -> tuple[int, int]:
    """(stride, blocks) of a transposed conv that streams as whole output blocks; raises ValueError
    for the ones that cannot: not causal with trim_right_ratio 1 (other ratios drop samples at the
    start and would shift every chunk boundary), padded or dilated, or a kernel of part strides."""
    conv = layer.conv
    if not layer.causal or layer.padding_left != 0:
        raise ValueError("streaming needs causal transposed convs with trim_right_ratio=1.0")
    if conv.padding[0] != 0 or conv.output_padding[0] != 0 or conv.dilation[0] != 1:
        raise ValueError("unexpected padding/dilation on a MimiConvTranspose1d")
    stride, kernel = conv.stride[0], conv.kernel_size[0]
    if kernel < stride or kernel % stride:
        raise ValueError(f"streaming needs a kernel of whole strides (kernel {kernel}, stride {stride})")
    return stride, kernel // stride


class StreamingConvTranspose1d:
    """Causal `MimiConvTranspose1d` that emits only finished samples.

    With `trim_right_ratio == 1` the full decode keeps the first `T * stride` samples of T inputs,
    and exactly those are final once the T-th input is in. Output block l sums inputs l - b + 1 .. l
    (b = kernel / stride), so the state is the last b - 1 inputs and each chunk's blocks are computed
    whole from them (`transposed_conv_blocks`; grouped convs other than depthwise as the dense one).
    `transposed_conv_blocks_of` says which layers cannot stream so (none in Mimi).
    """

    def __init__(
        self, layer: MimiConvTranspose1d, max_streams: int, device: torch.device, dtype: torch.dtype
    ):
        conv = layer.conv
        self.conv = conv
        self.stride, blocks = transposed_conv_blocks_of(layer)
        self.depthwise = conv.groups == conv.in_channels and conv.out_channels == conv.groups
        self.history = blocks - 1
        with torch.no_grad():
            weight = conv.weight if self.depthwise else dense_weight(conv.weight, conv.groups)
            self.taps = window_taps(weight, self.stride, self.depthwise)
        self.state = torch.zeros(max_streams, conv.in_channels, self.history, device=device, dtype=dtype)

    def reset(self, slots: torch.Tensor) -> None:
        self.state.index_fill_(0, slots, 0)

    def __call__(self, x: torch.Tensor, slots: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        if self.history:
            x = torch.cat([self.state[slots], x], dim=-1)
            self.state[slots] = x[..., -self.history :]
        return transposed_conv_blocks(x, self.taps, self.stride, self.depthwise, self.conv.bias)


class StreamingResnetBlock:
    """`MimiResnetBlock`: streaming branch plus (identity or 1x1 conv) shortcut."""

    def __init__(self, block: list[StreamOp], shortcut: StreamOp):
        self.block = block
        self.shortcut = shortcut

    def __call__(self, x: torch.Tensor, slots: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        h = x
        for op in self.block:
            h = op(h, slots, fresh)
        return self.shortcut(x, slots, fresh) + h


def _stateless(module: nn.Module) -> StreamOp:
    return lambda x, slots, fresh: module(x)


class StreamingStack:
    """A sequence of Mimi conv layers (the SEANet decoder, or the frame-rate upsample) made streaming.

    `stateful` lists every op with per-slot state so `reset(slots)` can clear them all. Its
    activations are (B, C, T), as transformers lays them out.
    """

    channels_last = False

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
            block = [self._wrap(m) for m in layer.block]
            return StreamingResnetBlock(block, self._wrap(layer.shortcut))
        elif isinstance(layer, _STATELESS):
            return _stateless(layer)
        else:
            raise TypeError(f"no streaming rule for layer {type(layer).__name__}")
        self.stateful.append(op)
        return op

    def reset(self, slots: torch.Tensor) -> None:
        for op in self.stateful:
            op.reset(slots)

    def __call__(self, x: torch.Tensor, slots: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op(x, slots, fresh)
        return x
