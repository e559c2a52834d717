"""Streaming Mimi decode equals transformers' full `MimiModel.decode`, chunk by chunk, slot by slot."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import MimiConfig, MimiModel

from serve_app.model.mimi_layout import decoder_parts
from serve_app.model.mimi_stream import MimiStreamDecoder
from serve_app.model.mimi_stream_seanet import StreamingConvTranspose1d
from tests.support_mimi_stream import full_decode, random_codes, random_mimi, tiny_mimi_config

FRAMES = 12  # 24 transformer tokens, four times the tiny sliding window of 6
ATOL, RTOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def mimi():
    return random_mimi(tiny_mimi_config())



def stream_decode(decoder: MimiStreamDecoder, codes: torch.Tensor, chunks: list[int], slot: int = 0):
    slots = torch.full((codes.shape[0],), slot, dtype=torch.long)
    if codes.shape[0] > 1:
        slots = torch.arange(codes.shape[0])
    for s in slots.tolist():
        decoder.reset(s)
    pieces, start = [], 0
    for n in chunks:
        piece = decoder.decode(codes[:, :, start : start + n], slots)
        assert piece.shape == (codes.shape[0], n * 1920) and piece.dtype == torch.float32
        pieces.append(piece)
        start += n
    assert start == codes.shape[-1]
    return torch.cat(pieces, dim=-1)


def split(total: int, size: int) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]


def random_split(total: int, seed: int) -> list[int]:
    rng, chunks = random.Random(seed), []
    while total:
        chunks.append(min(total, rng.randint(1, 5)))
        total -= chunks[-1]
    return chunks


SCHEDULES = {
    "1": split(FRAMES, 1),
    "2": split(FRAMES, 2),
    "3": split(FRAMES, 3),
    "7": split(FRAMES, 7),
    "all": [FRAMES],  # 24 tokens: more than one attention pass takes, so it runs in pieces
    "random-a": random_split(FRAMES, 1),
    "random-b": random_split(FRAMES, 2),
}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_chunked_stream_equals_full_decode(mimi, batch, schedule):
    codes = random_codes(batch, FRAMES, mimi.config, seed=batch)
    decoder = MimiStreamDecoder(mimi, max_streams=3)
    torch.testing.assert_close(
        stream_decode(decoder, codes, schedule), full_decode(mimi, codes), atol=ATOL, rtol=RTOL
    )


def test_interleaved_slots_with_different_histories(mimi):
    """Streams start at different times, are decoded in varying groups and orders, and never mix."""
    lengths = {4: 10, 0: 8, 2: 6}  # slot -> frames of its stream
    codes = {slot: random_codes(1, n, mimi.config, seed=10 + slot) for slot, n in lengths.items()}
    decoder = MimiStreamDecoder(mimi, max_streams=5)
    done = {slot: 0 for slot in lengths}
    pieces: dict[int, list[torch.Tensor]] = {slot: [] for slot in lengths}
    rng = random.Random(7)
    decoder.reset(4)
    for step in range(40):
        if step == 2:
            decoder.reset(0)
        if step == 5:
            decoder.reset(2)
        active = [s for s in lengths if decoder._active[s] and done[s] < lengths[s]]
        if not active:
            break
        group = rng.sample(active, rng.randint(1, len(active)))
        n = min(rng.randint(1, 3), *(lengths[s] - done[s] for s in group))
        batch_codes = torch.cat([codes[s][:, :, done[s] : done[s] + n] for s in group])
        out = decoder.decode(batch_codes, torch.tensor(group))
        for row, s in enumerate(group):
            pieces[s].append(out[row])
            done[s] += n
    assert done == lengths
    for slot in lengths:
        streamed = torch.cat(pieces[slot])
        torch.testing.assert_close(streamed, full_decode(mimi, codes[slot])[0], atol=ATOL, rtol=RTOL)


def test_reset_slot_matches_fresh_decoder(mimi):
    first = random_codes(1, 9, mimi.config, seed=21)
    second = random_codes(1, 8, mimi.config, seed=22)
    reused = MimiStreamDecoder(mimi, max_streams=2)
    stream_decode(reused, first, split(9, 2), slot=1)
    reused.free(1)
    again = stream_decode(reused, second, split(8, 3), slot=1)
    fresh = stream_decode(MimiStreamDecoder(mimi, max_streams=2), second, split(8, 3), slot=1)
    torch.testing.assert_close(again, fresh, atol=0, rtol=0)


def test_acquire_and_free_cycle_slots(mimi):
    decoder = MimiStreamDecoder(mimi, max_streams=2)
    a, b = decoder.acquire(), decoder.acquire()
    assert {a, b} == {0, 1} and decoder.free_slots == []
    with pytest.raises(RuntimeError):
        decoder.acquire()
    decoder.free(a)
    assert decoder.acquire() == a
    decoder.free(b)
    with pytest.raises(ValueError, match="not active"):
        decoder.decode(random_codes(1, 1, mimi.config), torch.tensor([b]))


@pytest.mark.parametrize(
    "overrides",
    [
        {"pad_mode": "replicate"},
        {"num_key_value_heads": 4, "sliding_window": 1},
        {"num_residual_layers": 2, "use_conv_shortcut": True, "sliding_window": 9},
    ],
    ids=["replicate-pad", "mha-window-1", "dilated-shortcut"],
)
def test_config_variants_stream_exactly(overrides):
    model = random_mimi(tiny_mimi_config(**overrides), seed=3)
    codes = random_codes(2, 8, model.config, seed=4)
    streamed = stream_decode(MimiStreamDecoder(model, max_streams=2), codes, [1, 3, 4])
    torch.testing.assert_close(streamed, full_decode(model, codes), atol=ATOL, rtol=RTOL)


def test_uses_the_models_own_weights(mimi):
    """A weight changed in place after construction shows up in the stream: nothing was copied."""
    model = random_mimi(tiny_mimi_config(), seed=5)
    codes = random_codes(1, 6, model.config, seed=6)
    decoder = MimiStreamDecoder(model, max_streams=1)
    before = stream_decode(decoder, codes, [2, 4])
    with torch.no_grad():
        parts = decoder_parts(model)
        parts.transformer.layers[0].mlp.fc1.weight.mul_(3.0)
        parts.seanet_layers[0].conv.weight.mul_(-1.0)
    after = stream_decode(decoder, codes, [2, 4])
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, full_decode(model, codes), atol=ATOL, rtol=RTOL)


def test_float64_stream_is_exact_after_moving_the_model():
    """In float64 streaming and full decode agree to rounding; the model was decoded in float32 first."""
    model = random_mimi(tiny_mimi_config(), seed=11).double()  # codebook tables cached in float32
    codes = random_codes(2, 12, model.config, seed=12)
    streamed = stream_decode(MimiStreamDecoder(model, max_streams=2), codes, [5, 1, 4, 2])
    torch.testing.assert_close(streamed, full_decode(model, codes).float(), atol=1e-6, rtol=0)


def test_real_shapes_one_frame_is_1920_samples(mimi):
    decoder = MimiStreamDecoder(mimi, max_streams=1)
    assert decoder.frame_samples == 1920 and decoder.tokens_per_frame == 2


@pytest.mark.parametrize(
    "codes, slots, message",
    [
        (torch.zeros(1, 31, 2, dtype=torch.long), [0], "codes must be"),
        (torch.zeros(1, 32, 0, dtype=torch.long), [0], "codes must be"),
        (torch.zeros(1, 32, 2, dtype=torch.int32), [0], "int64"),
        (torch.full((1, 32, 2), 64, dtype=torch.long), [0], r"\[0, 64\)"),
        (torch.full((1, 32, 2), -1, dtype=torch.long), [0], r"\[0, 64\)"),
        (torch.zeros(2, 32, 2, dtype=torch.long), [0], "slots must be"),
        (torch.zeros(2, 32, 2, dtype=torch.long), [0, 0], "distinct"),
        (torch.zeros(1, 32, 2, dtype=torch.long), [5], "out of range"),
        (torch.zeros(1, 32, 2, dtype=torch.long), [1], "not active"),
    ],
)
def test_bad_input_is_rejected_before_touching_state(mimi, codes, slots, message):
    decoder = MimiStreamDecoder(mimi, max_streams=2)
    decoder.reset(0)
    with pytest.raises(ValueError, match=message):
        decoder.decode(codes, torch.tensor(slots))
    assert int(decoder._seen[0]) == 0


@pytest.mark.parametrize(
    "overrides, max_streams, message",
    [
        ({}, 0, "max_streams"),
        ({"use_causal_conv": False}, 1, "causal"),
        ({"trim_right_ratio": 0.5}, 1, "trim_right_ratio"),
        ({"pad_mode": "reflect"}, 1, "reflect"),
        ({"sliding_window": 0}, 1, "sliding_window"),
    ],
)
def test_unstreamable_models_are_refused(overrides, max_streams, message):
    with pytest.raises(ValueError, match=message):
        MimiStreamDecoder(MimiModel(tiny_mimi_config(**overrides)), max_streams=max_streams)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, atol", [(torch.float32, ATOL), (torch.bfloat16, None)])
def test_cuda_stream_matches_full_decode(dtype, atol, monkeypatch):
    # cuDNN convolutions default to TF32, whose 10-bit mantissa differs per chunking at ~1e-2
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = random_mimi(tiny_mimi_config(), seed=8).to("cuda", dtype)
    MimiStreamDecoder(model, max_streams=1)  # drops the float32 CPU codebook cache for full_decode too
    codes = random_codes(3, FRAMES, model.config, seed=9).cuda()
    streamed = stream_decode(MimiStreamDecoder(model, max_streams=3), codes, random_split(FRAMES, 3))
    ref = full_decode(model, codes).float()
    if atol is not None:
        torch.testing.assert_close(streamed, ref, atol=atol, rtol=RTOL)
    else:  # bf16 rounds differently per chunking; require the same waveform, not the same bits
        assert torch.nn.functional.cosine_similarity(streamed, ref, dim=-1).min() > 0.99


@pytest.mark.gpu
def test_cuda_full_size_config_past_the_window(monkeypatch):
    """The real Mimi shapes (window of 250 tokens = 125 frames), streamed for 140 frames."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = random_mimi(MimiConfig(), seed=13).cuda()
    decoder = MimiStreamDecoder(model, max_streams=2)
    codes = random_codes(2, 140, model.config, seed=14).cuda()
    streamed = stream_decode(decoder, codes, random_split(140, 5))
    torch.testing.assert_close(streamed, full_decode(model, codes), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("kernel", "stride"), [(5, 2), (2, 4)])
def test_transposed_convs_of_part_strides_are_refused(kernel, stride) -> None:
    """A kernel of part strides has no whole output blocks to compute from the last inputs."""
    from transformers.models.mimi.modeling_mimi import MimiConvTranspose1d

    layer = MimiConvTranspose1d(tiny_mimi_config(), 8, 8, kernel, stride)
    with pytest.raises(ValueError, match="whole strides"):
        StreamingConvTranspose1d(layer, 1, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize(("groups", "schedule"), [(4, [1, 2, 1]), (8, [3, 1]), (1, [4])])
def test_grouped_transposed_convs_stream_the_whole_conv(groups, schedule) -> None:
    """Grouped (not depthwise, as a small Mimi's upsampler can be), depthwise and dense transposed
    convs, fed chunk by chunk, give the whole conv's samples, bias included."""
    from transformers.models.mimi.modeling_mimi import MimiConvTranspose1d

    torch.manual_seed(groups)
    layer = MimiConvTranspose1d(tiny_mimi_config(), 8, 8, 4, 2, groups=groups, bias=True)
    stream = StreamingConvTranspose1d(layer, 2, torch.device("cpu"), torch.float32)
    x = torch.randn(2, 8, sum(schedule))
    slots, fresh = torch.arange(2), torch.ones(2, dtype=torch.bool)
    pieces, start = [], 0
    with torch.no_grad():
        for n in schedule:
            pieces.append(stream(x[..., start : start + n], slots, fresh))
            start += n
        whole = layer.conv(x)[..., : x.shape[-1] * 2]
    torch.testing.assert_close(torch.cat(pieces, dim=-1), whole, rtol=1e-5, atol=1e-5)


def test_resetting_several_slots_at_once_restarts_exactly_those(mimi) -> None:
    """A batch of slots reset in one call decodes as fresh streams; an untouched slot carries on."""
    decoder = MimiStreamDecoder(mimi, max_streams=4)
    first = random_codes(3, 5, mimi.config, seed=1)
    second = random_codes(3, 4, mimi.config, seed=2)
    slots = torch.tensor([0, 1, 3])
    decoder.reset(0, 1, 3)
    decoder.decode(first[:, :, :3], slots)
    carried = decoder.decode(first[1:2, :, 3:], torch.tensor([1]))
    decoder.reset(0, 3)  # slot 1 keeps its stream
    again = decoder.decode(second[[0, 2]], torch.tensor([0, 3]))
    fresh = MimiStreamDecoder(mimi, max_streams=4)
    fresh.reset(2, 0)
    expected = fresh.decode(second[[0, 2]], torch.tensor([2, 0]))
    torch.testing.assert_close(again, expected)
    torch.testing.assert_close(carried[0], full_decode(mimi, first[1:2])[0, 3 * 1920 :], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "stride", "depthwise", "length"),
    [
        (32, 32, 4, 2, True, 8),  # Mimi's depthwise upsampler
        (32, 16, 16, 8, False, 5),  # SEANet's transposed convs: kernel = 2 x stride
        (8, 8, 15, 5, False, 3),  # three blocks per input
        (6, 6, 9, 3, True, 2),
    ],
)
def test_transposed_conv_blocks_from_inputs_equal_conv_transpose(
    c_in, c_out, kernel, stride, depthwise, length
) -> None:
    """Each output block computed whole from its window of inputs (the input-history form): with
    b - 1 zero inputs on each side it is the whole transposed conv, bias included."""
    from serve_app.model.mimi_stream_seanet import transposed_conv_blocks, window_taps

    gen = torch.Generator().manual_seed(kernel * 10 + length)
    groups = c_in if depthwise else 1
    x = torch.randn(2, c_in, length, generator=gen)
    weight = torch.randn(c_in, c_out // groups, kernel, generator=gen)
    bias = torch.randn(c_out, generator=gen)
    expected = torch.nn.functional.conv_transpose1d(x, weight, bias, stride, groups=groups)
    pad = kernel // stride - 1
    got = transposed_conv_blocks(
        torch.nn.functional.pad(x, (pad, pad)),
        window_taps(weight, stride, depthwise),
        stride,
        depthwise,
        bias,
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_transposed_convs_keep_their_last_inputs(mimi) -> None:
    """The transposed convs' state is their last kernel / stride - 1 inputs (input channels wide),
    not the output tails: the upsamplers write no taps wider than their output."""
    decoder = MimiStreamDecoder(mimi, max_streams=2)
    ops = decoder._seanet.stateful + decoder._upsample.stateful
    convs = [op for op in ops if isinstance(op, StreamingConvTranspose1d)]
    assert len(convs) == len(mimi.config.upsampling_ratios) + 1
    for op in convs:
        kernel, stride = op.conv.kernel_size[0], op.conv.stride[0]
        assert op.state.shape == (2, op.conv.in_channels, kernel // stride - 1)
