"""The random-weight presets: `tiny-random` for CPU work, `csm-1b-random` for the real model's cost
on a GPU without its weights (offline tokenizer, one shared audio table, labelled as noise)."""

from __future__ import annotations

import time

import pytest
import torch

from serve_app.config import get_preset
from serve_app.model import tiny
from serve_app.model.config import SESAME_FLAVORS
from serve_app.model.loading import load_model
from serve_app.model.tokenizer import LLAMA3_BOS_ID, LLAMA3_EOS_ID, HashedWordTokenizer, TextTokenizer

CSM_1B_PARAMETERS = 1_553_000_000  # backbone + depth decoder + heads + text and audio tables, roughly


def test_csm_1b_random_has_the_released_geometry() -> None:
    preset = get_preset("csm-1b-random")
    cfg = tiny.RANDOM_GEOMETRIES[preset.geometry]
    assert (preset.format, preset.geometry) == ("random", "csm-1b")
    assert cfg.backbone == SESAME_FLAVORS["llama-1B"] and cfg.decoder == SESAME_FLAVORS["llama-100M"]
    assert (cfg.text_vocab_size, cfg.audio_vocab_size, cfg.num_codebooks, cfg.max_seq_len) == (
        128_256,
        2051,
        32,
        2048,
    )
    mimi = tiny.mimi_config("csm-1b")
    assert (mimi.sampling_rate, mimi.frame_rate, mimi.num_quantizers, mimi.codebook_size) == (
        24_000,
        12.5,
        32,
        2048,
    )
    assert mimi.hidden_size == 512  # the released codec's width, not the tiny one
    assert tiny.mimi_config("tiny").hidden_size == tiny.TINY_MIMI_KWARGS["hidden_size"]


def test_unknown_geometry_is_refused() -> None:
    from serve_app.config import ModelPreset

    with pytest.raises(ValueError, match="geometry"):
        ModelPreset(name="x", format="random", geometry="huge")  # type: ignore[arg-type]


def test_hashed_word_tokenizer_is_stable_one_id_per_word_and_wrapped() -> None:
    tok = HashedWordTokenizer()
    ids = tok.encode_turn("Hello there, how are you?", 1)
    # "[", "1", "]", Hello, there, ",", how, are, you, "?"
    assert len(ids) == 2 + 10
    assert (ids[0], ids[-1]) == (LLAMA3_BOS_ID, LLAMA3_EOS_ID)
    assert all(0 <= i < LLAMA3_BOS_ID for i in ids[1:-1])
    assert ids == HashedWordTokenizer().encode_turn("Hello there, how are you?", 1)
    assert ids[4] == tok.encode_turn("Hello", 0)[4]  # a word's id does not depend on its turn
    assert tok.encode_turn("Hello", 0) != tok.encode_turn("Hullo", 0)
    small = HashedWordTokenizer(vocab_size=1000)
    assert (small.bos_id, small.eos_id) == (998, 999)
    assert max(small.encode_turn("many different words here", 0)[1:-1]) < 998
    with pytest.raises(ValueError):
        HashedWordTokenizer(vocab_size=1000, bos_id=5000)


def test_full_size_random_path_builds_on_the_device_with_one_audio_table(monkeypatch) -> None:
    """The csm-1b geometry's loading path, on a CPU-sized stand-in for the full model."""
    small = tiny.TINY_CONFIG
    monkeypatch.setitem(tiny.RANDOM_GEOMETRIES, "csm-1b", small)
    monkeypatch.setattr(tiny, "mimi_config", lambda geometry: tiny.tiny_mimi_config())
    loaded = load_model("csm-1b-random", "cpu")
    model = loaded.model
    assert model.decoder_embeddings.weight is model.audio_embeddings.weight
    assert isinstance(loaded.tokenizer, HashedWordTokenizer)
    assert loaded.info["format"] == "random" and loaded.info["model"] == "csm-1b-random"
    assert not model.audio_embeddings.weight.requires_grad
    # Seeded: the same preset twice gives the same weights.
    again = load_model("csm-1b-random", "cpu").model
    assert torch.equal(
        again.backbone.layers[0].attention.wqkv.weight, model.backbone.layers[0].attention.wqkv.weight
    )
    tiny_loaded = load_model("tiny-random", "cpu")
    assert isinstance(tiny_loaded.tokenizer, TextTokenizer)
    assert tiny_loaded.model.decoder_embeddings.weight is not tiny_loaded.model.audio_embeddings.weight


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_csm_1b_random_builds_on_a_gpu_in_seconds() -> None:
    start = time.perf_counter()
    loaded = load_model("csm-1b-random", "cuda")
    seconds = time.perf_counter() - start
    print(f"csm-1b-random loaded in {seconds:.1f} s, {loaded.info['parameters'] / 1e9:.2f} B parameters")
    assert loaded.model.codebook0_head.weight.dtype == torch.bfloat16
    assert abs(loaded.info["parameters"] - CSM_1B_PARAMETERS) / CSM_1B_PARAMETERS < 0.02
    assert seconds < 30
