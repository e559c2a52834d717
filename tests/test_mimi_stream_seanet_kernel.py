"""The channels-last SEANet: the `stream_conv` kernel computes a causal conv over each slot's stored
rows and the new ones (dilated, ELU before, bias and shortcut after, a transposed conv's blocks), and
the whole streaming decode through `KernelSeanet` equals transformers' full decode under any
chunking; layouts it does not take fall back to `StreamingStack`.

Compiled on a CUDA device (where these tests carry the `gpu` mark), else under Triton's CPU
interpreter (`TRITON_INTERPRET`, set by conftest before anything imports Triton)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import MimiModel

from serve_app.model import mimi_stream_seanet, mimi_stream_seanet_kernel
from serve_app.model.kernels.stream_conv import stream_conv
from serve_app.model.mimi_layout import decoder_parts
from serve_app.model.mimi_stream import MimiStreamDecoder
from serve_app.model.mimi_stream_seanet import StreamingStack, window_taps
from serve_app.model.mimi_stream_seanet_kernel import KernelSeanet
from tests.support_mimi_stream import full_decode, random_codes, random_mimi, tiny_mimi_config

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = [pytest.mark.usefixtures("one_thread"), *([pytest.mark.gpu] if DEVICE.type == "cuda" else [])]
TOL = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture
def kernel_seanet(monkeypatch):
    monkeypatch.setattr(mimi_stream_seanet, "SEANET_KERNEL", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.parametrize(
    "kernel, dilation, c_in, c_out, length, elu, bias, residual",
    [
        (3, 1, 8, 4, 5, True, True, False),  # a residual block's first conv
        (1, 1, 4, 8, 5, True, True, True),  # its 1x1 conv, adding the shortcut
        (3, 2, 8, 4, 2, True, False, False),  # dilated, a chunk shorter than the context
        (7, 1, 40, 1, 70, False, True, False),  # the last conv: one output channel, two row tiles
        (2, 1, 16, 144, 3, True, True, True),  # wide: shorter row tiles, two column tiles
    ],
)
def test_stream_conv_is_the_conv_over_the_stored_rows_and_the_new_ones(
    kernel, dilation, c_in, c_out, length, elu, bias, residual, monkeypatch
) -> None:
    # the reference conv in full fp32: cuDNN's TF32 alone misses the tolerance at 280 inputs a row
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    gen = torch.Generator().manual_seed(kernel * 100 + length)
    context = (kernel - 1) * dilation
    state = torch.randn(5, context, c_in, generator=gen).to(DEVICE)
    slots = torch.tensor([4, 0, 2], device=DEVICE)
    x = torch.randn(3, length, c_in, generator=gen).to(DEVICE)
    weight = torch.randn(c_out, c_in, kernel, generator=gen).to(DEVICE)
    b = torch.randn(c_out, generator=gen).to(DEVICE) if bias else None
    shortcut = torch.randn(3, length, c_out, generator=gen).to(DEVICE) if residual else None
    rows = weight.permute(2, 1, 0).reshape(kernel * c_in, c_out).contiguous()
    got = stream_conv(
        x, state, slots, rows, dilation=dilation, bias=b, residual=shortcut, elu_alpha=1.0 if elu else None
    )
    inputs = torch.cat([state[slots], x], dim=1)
    want = F.conv1d((F.elu(inputs) if elu else inputs).transpose(1, 2), weight, b, dilation=dilation)
    want = want.transpose(1, 2) + (shortcut if residual else 0)
    assert got.shape == (3, length, c_out)
    torch.testing.assert_close(got, want, **TOL)


def test_stream_conv_computes_a_transposed_convs_blocks_channels_last() -> None:
    """With the taps laid out sample-major, the kernel over windows of b inputs gives a transposed
    conv's output channels-last: its whole output when the stored rows and a tail are zeros."""
    gen = torch.Generator().manual_seed(3)
    c_in, c_out, stride, blocks, length = 8, 6, 4, 2, 5
    x = torch.randn(2, length, c_in, generator=gen)
    weight = torch.randn(c_in, c_out, stride * blocks, generator=gen)
    bias = torch.randn(c_out, generator=gen)
    want = F.conv_transpose1d(x.transpose(1, 2), weight, bias, stride).transpose(1, 2)  # (B, T, C)
    taps = window_taps(weight, stride, depthwise=False, channels_last=True).to(DEVICE)
    padded = torch.cat([x, torch.zeros(2, blocks - 1, c_in)], dim=1).to(DEVICE)
    state = torch.zeros(2, blocks - 1, c_in, device=DEVICE)
    got = stream_conv(
        padded, state, torch.arange(2, device=DEVICE), taps, bias=bias.repeat(stride).to(DEVICE)
    )
    torch.testing.assert_close(got.view(2, -1, c_out).cpu(), want, **TOL)


def test_stream_conv_refuses_a_state_of_the_wrong_width() -> None:
    x = torch.zeros(1, 4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="do not fit"):
        stream_conv(
            x,
            torch.zeros(1, 3, 8, device=DEVICE),
            torch.zeros(1, dtype=torch.long, device=DEVICE),
            torch.zeros(24, 4, device=DEVICE),
        )


@pytest.mark.parametrize("schedule", [[1, 2, 3], [6]], ids=["1-2-3", "6"])
def test_kernel_seanet_streams_the_full_decode(kernel_seanet, schedule) -> None:
    mimi = random_mimi(tiny_mimi_config(), seed=5).to(DEVICE)
    decoder = MimiStreamDecoder(mimi, max_streams=3)
    assert isinstance(decoder._seanet, KernelSeanet)
    codes = random_codes(2, sum(schedule), mimi.config, seed=6).to(DEVICE)
    slots = torch.tensor([2, 0], device=DEVICE)
    decoder.reset(2, 0)
    pieces, start = [], 0
    for n in schedule:
        pieces.append(decoder.decode(codes[:, :, start : start + n], slots))
        start += n
    torch.testing.assert_close(torch.cat(pieces, dim=-1), full_decode(mimi, codes).float(), **TOL)


def test_kernel_seanet_restarts_a_reset_slot(kernel_seanet) -> None:
    mimi = random_mimi(tiny_mimi_config(), seed=7).to(DEVICE)
    decoder = MimiStreamDecoder(mimi, max_streams=2)
    first, second = (random_codes(1, 3, mimi.config, seed=s).to(DEVICE) for s in (8, 9))
    slot = torch.tensor([1], device=DEVICE)
    decoder.reset(1)
    decoder.decode(first, slot)
    decoder.reset(1)
    torch.testing.assert_close(decoder.decode(second, slot), full_decode(mimi, second).float(), **TOL)


def test_each_conv_runs_once_as_the_decoder_is_built_leaving_no_state(kernel_seanet, monkeypatch) -> None:
    runs, real = [], mimi_stream_seanet_kernel.stream_conv
    monkeypatch.setattr(
        mimi_stream_seanet_kernel, "stream_conv", lambda *a, **k: runs.append(1) or real(*a, **k)
    )
    decoder = MimiStreamDecoder(random_mimi(tiny_mimi_config(), seed=5).to(DEVICE), max_streams=2)
    assert isinstance(decoder._seanet, KernelSeanet)
    assert len(runs) == len(decoder._seanet.steps)
    assert not any(step.state.any() for step in decoder._seanet.steps)


def test_a_kernel_that_fails_its_first_run_leaves_the_decoder_on_the_stack(
    kernel_seanet, monkeypatch
) -> None:
    def no_kernel(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(mimi_stream_seanet_kernel, "stream_conv", no_kernel)
    mimi = random_mimi(tiny_mimi_config(), seed=5).to(DEVICE)
    decoder = MimiStreamDecoder(mimi, max_streams=1)
    assert isinstance(decoder._seanet, StreamingStack)
    codes = random_codes(1, 3, mimi.config, seed=6).to(DEVICE)
    decoder.reset(0)
    got = decoder.decode(codes, torch.tensor([0], device=DEVICE))
    torch.testing.assert_close(got, full_decode(mimi, codes).float(), **TOL)


def test_the_kernel_seanet_takes_the_real_mimis_layers() -> None:
    from transformers import MimiConfig

    layers = decoder_parts(MimiModel(MimiConfig())).seanet_layers
    seanet = KernelSeanet(layers, 1, torch.device("cpu"), torch.float32)
    # a conv, then per upsampling ratio a transposed conv and a residual block of two, then a conv
    assert len(seanet.steps) == 2 + 3 * 4
    assert (
        sum(step.opens_block for step in seanet.steps) == sum(step.closes_block for step in seanet.steps) == 4
    )
    assert [step.upsample for step in seanet.steps if step.upsample > 1] == [8, 6, 5, 4]


@pytest.mark.parametrize(
    "setting, on_cuda, on_cpu", [(None, True, False), (True, True, True), (False, False, False)]
)
def test_the_kernel_is_the_default_where_triton_compiles(setting, on_cuda, on_cpu, monkeypatch) -> None:
    """By default decoders take the kernel on CUDA only: the interpreter would run it on CPU, slowly."""
    monkeypatch.setattr(mimi_stream_seanet, "SEANET_KERNEL", setting)
    assert mimi_stream_seanet.seanet_kernel_on(torch.device("cuda")) is on_cuda
    assert mimi_stream_seanet.seanet_kernel_on(torch.device("cpu")) is on_cpu
    decoder = MimiStreamDecoder(MimiModel(tiny_mimi_config()).eval().to(DEVICE), max_streams=1)
    want_kernel = on_cuda if DEVICE.type == "cuda" else on_cpu
    assert isinstance(decoder._seanet, KernelSeanet if want_kernel else StreamingStack)


def test_layouts_it_does_not_take_stay_on_the_streaming_stack(kernel_seanet) -> None:
    mimi = MimiModel(tiny_mimi_config(pad_mode="replicate")).eval()
    with pytest.raises(ValueError, match="zero-padded"):
        KernelSeanet(decoder_parts(mimi).seanet_layers, 1, torch.device("cpu"), torch.float32)
    decoder = MimiStreamDecoder(mimi, max_streams=1)
    assert isinstance(decoder._seanet, StreamingStack)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="bf16 tensor cores and the full-size shapes: CUDA only")
def test_kernel_seanet_on_cuda_in_bf16_and_at_full_size(kernel_seanet) -> None:
    """bf16 rounds differently per chunking (the same waveform, not the same bits); the real Mimi's
    widths (1024 channels in, 1920 samples a frame) in fp32 give the full decode."""
    from transformers import MimiConfig

    model = random_mimi(tiny_mimi_config(), seed=8).to(DEVICE, torch.bfloat16)
    codes = random_codes(3, 8, model.config, seed=9).to(DEVICE)
    decoder = MimiStreamDecoder(model, max_streams=3)
    assert isinstance(decoder._seanet, KernelSeanet)
    slots = torch.arange(3, device=DEVICE)
    decoder.reset(0, 1, 2)
    streamed = torch.cat([decoder.decode(codes[:, :, i : i + 2], slots) for i in range(0, 8, 2)], dim=-1)
    ref = full_decode(model, codes).float()
    assert F.cosine_similarity(streamed, ref, dim=-1).min() > 0.99

    full = random_mimi(MimiConfig(), seed=13).to(DEVICE)
    decoder = MimiStreamDecoder(full, max_streams=2)
    codes = random_codes(2, 12, full.config, seed=14).to(DEVICE)
    decoder.reset(0, 1)
    slots = torch.arange(2, device=DEVICE)
    streamed = torch.cat([decoder.decode(codes[:, :, i : i + 3], slots) for i in range(0, 12, 3)], dim=-1)
    torch.testing.assert_close(streamed, full_decode(full, codes), **TOL)
