"""MimiCodec against transformers' MimiModel calls (tiny random codec, real 24 kHz / 12.5 fps geometry)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.engine.types import FRAME_SAMPLES
from serve_app.model.mimi import MimiCodec
from serve_app.model.mimi_layout import to_flat_keys, to_model_keys
from serve_app.model.tiny import tiny_mimi_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def codec() -> MimiCodec:
    return MimiCodec.random(tiny_mimi_config(), seed=0)


def noise(samples: int, seed: int = 0) -> np.ndarray:
    return (np.random.RandomState(seed).randn(samples) * 0.1).astype(np.float32)


def test_encode_and_decode_equal_the_transformers_calls(codec: MimiCodec) -> None:
    pcm = noise(FRAME_SAMPLES * 3 + 500)
    codes = codec.encode(pcm)
    with torch.no_grad():
        ref = codec.model.encode(torch.from_numpy(pcm).view(1, 1, -1), num_quantizers=32).audio_codes
        ref_pcm = codec.model.decode(ref).audio_values
    assert codes.shape == (4, 32)  # ceil(samples / 1920) frames
    assert torch.equal(codes, ref[0].T)
    assert len(set(codes[:, 0].tolist())) > 1  # a non-degenerate codec: frames differ
    pcm_out = codec.decode(codes)
    assert pcm_out.shape == (4 * FRAME_SAMPLES,) and pcm_out.dtype == torch.float32
    assert torch.equal(pcm_out, ref_pcm[0, 0, : 4 * FRAME_SAMPLES])


def test_batched_decode_equals_one_by_one(codec: MimiCodec) -> None:
    codes = [codec.encode(noise(FRAME_SAMPLES * n, seed=n)) for n in (2, 5, 1)]
    batched = codec.decode_batch(codes + [torch.zeros(0, 32, dtype=torch.long)])
    for c, pcm in zip(codes, batched):
        torch.testing.assert_close(pcm, codec.decode(c), rtol=1e-4, atol=1e-5)
    assert batched[-1].numel() == 0
    assert codec.encode_batch([noise(100)])[0].shape == (1, 32)


def test_bad_inputs_are_value_errors(codec: MimiCodec) -> None:
    with pytest.raises(ValueError, match="mono"):
        codec.encode(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 2048\)"):
        codec.decode(torch.full((1, 32), 2050))
    with pytest.raises(ValueError, match="shape"):
        codec.decode(torch.zeros(3, 8, dtype=torch.long))
    assert codec.encode(np.zeros(0, np.float32)).shape == (0, 32)
    assert codec.decode(torch.zeros(0, 32, dtype=torch.long)).numel() == 0


def test_random_codec_decodes_to_bounded_audio(codec: MimiCodec) -> None:
    pcm = codec.decode(torch.randint(0, 2048, (6, 32), generator=torch.Generator().manual_seed(0)))
    assert 0.01 < float(pcm.abs().max()) <= 1.5


def test_hub_names_load_into_the_installed_layout(codec: MimiCodec) -> None:
    """Hub checkpoints name Mimi's parts flat (`decoder.layers.N`); whichever layout the installed
    transformers builds, the flat names map onto every one of its weights and back."""
    own = codec.model.state_dict()
    flat = to_flat_keys(own)
    assert any(k.startswith("decoder.layers.") for k in flat)
    assert any(k.startswith("decoder_transformer.") for k in flat)
    assert not any("decoder_seanet" in k or "encoder_seanet" in k for k in flat)
    mapped = to_model_keys(codec.model, flat)
    assert mapped.keys() == own.keys() and all(mapped[k] is own[k] for k in own)
    rebuilt = MimiCodec.from_state_dict(codec.model.config, flat)
    probe = torch.randint(0, codec.model.config.codebook_size, (1, codec.model.config.num_quantizers, 3))
    torch.testing.assert_close(
        rebuilt.model.decode(probe).audio_values, codec.model.decode(probe).audio_values
    )
