"""The streaming SEANet decoder channels-last, one `stream_conv` kernel per conv.

`StreamingStack` runs Mimi's SEANet as transformers lays it out, (B, C, T): an ELU pass before each
conv, the left context concatenated in front, cuDNN converting to channels-last and back, and a
separate add per residual block. The decoder transformer's output is channels-last already, and in
that layout a conv's window of input rows is contiguous, so here every conv is one kernel
(`serve_app.model.kernels.stream_conv`) that reads its window in place (the slot's stored rows
first), applies the preceding ELU as it loads, and adds the bias and a residual block's shortcut
before its one store; a transposed conv is the same kernel over windows of inputs with its taps laid
out sample-major, so its output blocks come out channels-last too. What is left between kernels is
the per-slot state: each conv keeps its last `(K - 1) * dilation` raw input rows.

Only the layer patterns Mimi uses are taken (ELU before a conv, identity shortcuts, dense transposed
convs of whole strides, zero padding); `KernelSeanet` raises ValueError for anything else, and the
decoder then keeps `StreamingStack`, as it does when the kernel fails its first run (`probe`).
Imported only where Triton runs (`mimi_stream_seanet.SEANET_KERNEL`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.mimi.modeling_mimi import MimiConv1d, MimiConvTranspose1d, MimiResnetBlock

from serve_app.model.kernels.stream_conv import stream_conv
from serve_app.model.mimi_stream_seanet import transposed_conv_blocks_of, window_taps


@dataclass
class ConvStep:
    """One conv of the SEANet as `stream_conv` runs it."""

    weight: torch.Tensor  # (K * C_in, N)
    bias: torch.Tensor | None
    dilation: int
    elu_alpha: float | None  # the ELU before it, applied as its inputs load
    state: torch.Tensor  # (max_streams, (K - 1) * dilation, C_in): each slot's last raw input rows
    upsample: int  # output rows per input row (a transposed conv's stride; 1 for a conv)
    opens_block: bool  # its input is a residual block's input, which the block's last conv adds
    closes_block: bool

    def __call__(self, x: torch.Tensor, slots: torch.Tensor, shortcut: torch.Tensor | None) -> torch.Tensor:
        batch, length, _ = x.shape
        out = stream_conv(
            x,
            self.state,
            slots,
            self.weight,
            dilation=self.dilation,
            bias=self.bias,
            residual=shortcut if self.closes_block else None,
            elu_alpha=self.elu_alpha,
        )
        self._remember(x, slots)
        return out.view(batch, length * self.upsample, -1)

    def _remember(self, x: torch.Tensor, slots: torch.Tensor) -> None:
        """Keep the last rows of (stored rows, x) for the slot's next chunk (after the kernel read them)."""
        context = self.state.shape[1]
        if context == 0:
            return
        if x.shape[1] >= context:
            self.state[slots] = x[:, -context:]
        else:
            self.state[slots] = torch.cat([self.state[slots], x], dim=1)[:, -context:]


class KernelSeanet:
    """Mimi's SEANet decoder layers, streamed channels-last: `(x (B, T, C), slots, fresh) -> (B, T', C')`."""

    channels_last = True

    def __init__(self, layers: list[nn.Module], max_streams: int, device: torch.device, dtype: torch.dtype):
        self._args = (max_streams, device, dtype)
        self.steps: list[ConvStep] = []
        elu = self._plan(layers, None)
        if elu is not None:
            raise ValueError("an ELU with no conv after it")
        if not self.steps:
            raise ValueError("no conv to run")

    def _plan(self, layers: list[nn.Module] | nn.ModuleList, elu: float | None) -> float | None:
        """Append a step per conv of `layers`; returns the ELU still waiting for its conv."""
        for layer in layers:
            if isinstance(layer, nn.ELU):
                if elu is not None:
                    raise ValueError("two ELUs in a row")
                elu = float(layer.alpha)
            elif isinstance(layer, MimiConv1d):
                self.steps.append(self._conv(layer, elu))
                elu = None
            elif isinstance(layer, MimiConvTranspose1d):
                self.steps.append(self._transposed(layer, elu))
                elu = None
            elif isinstance(layer, MimiResnetBlock):
                if elu is not None or not isinstance(layer.shortcut, nn.Identity):
                    raise ValueError("residual blocks need an identity shortcut and no ELU before them")
                first = len(self.steps)
                if self._plan(layer.block, None) is not None or len(self.steps) == first:
                    raise ValueError("a residual block must end with a conv")
                self.steps[first].opens_block = True
                self.steps[-1].closes_block = True
            else:
                raise ValueError(f"no kernel rule for layer {type(layer).__name__}")  # noqa: TRY004 (one error for every unsupported layout)
        return elu

    def _conv(self, layer: MimiConv1d, elu: float | None) -> ConvStep:
        conv = layer.conv
        if not layer.causal or layer.pad_mode != "constant":
            raise ValueError("the kernel streams causal, zero-padded convs only")
        if conv.stride[0] != 1 or conv.groups != 1 or conv.padding[0] != 0:
            raise ValueError("the kernel streams stride-1, ungrouped convs only")
        kernel, dilation = conv.kernel_size[0], conv.dilation[0]
        if int(layer.padding_total) != (kernel - 1) * dilation:
            raise ValueError("unexpected padding on a MimiConv1d")
        with torch.no_grad():  # (C_out, C_in, K) -> rows k * C_in + c
            weight = conv.weight.permute(2, 1, 0).reshape(kernel * conv.in_channels, -1).contiguous()
        return self._step(weight, conv.bias, dilation, elu, (kernel - 1) * dilation, conv.in_channels, 1)

    def _transposed(self, layer: MimiConvTranspose1d, elu: float | None) -> ConvStep:
        conv = layer.conv
        stride, blocks = transposed_conv_blocks_of(layer)
        if conv.groups != 1:
            raise ValueError("the kernel streams dense transposed convs only")
        with torch.no_grad():
            weight = window_taps(conv.weight, stride, depthwise=False, channels_last=True)
            bias = None if conv.bias is None else conv.bias.repeat(stride)  # column t * C_out + co
        return self._step(weight, bias, 1, elu, blocks - 1, conv.in_channels, stride)

    def _step(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        dilation: int,
        elu: float | None,
        context: int,
        in_channels: int,
        upsample: int,
    ) -> ConvStep:
        max_streams, device, dtype = self._args
        state = torch.zeros(max_streams, context, in_channels, device=device, dtype=dtype)
        return ConvStep(weight, bias, dilation, elu, state, upsample, False, False)

    def reset(self, slots: torch.Tensor) -> None:
        for step in self.steps:
            step.state.index_fill_(0, slots, 0)

    @torch.no_grad()
    def probe(self) -> None:
        """One frame of zeros through every conv on slot 0, which is then cleared: the kernels
        compile now, so a GPU or Triton that cannot run them shows while the decoder is built (and
        it falls back to `StreamingStack`), not at a stream's first chunk."""
        _, device, dtype = self._args
        slot = torch.zeros(1, dtype=torch.long, device=device)
        channels = self.steps[0].state.shape[-1]  # the first conv's inputs
        self(torch.zeros(1, 1, channels, device=device, dtype=dtype), slot, torch.ones(1, dtype=torch.bool))
        self.reset(slot)

    def __call__(self, x: torch.Tensor, slots: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        shortcut = None
        for step in self.steps:
            if step.opens_block:
                shortcut = x
            x = step(x, slots, shortcut)
        return x
