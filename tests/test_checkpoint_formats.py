"""Checkpoint layouts, presets and loading errors (tiny checkpoints written by the tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from serve_app.config import LOCAL_DIR_ENV, PRESETS, get_preset
from serve_app.engine.prompt import build_prompt
from serve_app.engine.types import Segment
from serve_app.model.checkpoint import (
    hf_to_internal,
    hf_to_sesame,
    internal_to_hf,
    permute_for_rope,
    sesame_to_hf,
    unpermute_for_rope,
)
from serve_app.model.config import RopeConfig, from_hf_config
from serve_app.model.llama import apply_rope, rope_inv_freq, rope_tables
from serve_app.model.loading import LoadedModel, ModelNotAvailableError, detect_format, load_model
from serve_app.model.mimi import moshi_to_hf_mimi
from serve_app.model.mimi_layout import to_flat_keys
from serve_app.model.tiny import TINY_CONFIG
from tests.support_checkpoints import (
    HF_BACKBONE_ROPE,
    HF_DECODER_ROPE,
    hf_mimi_to_moshi,
    reference_model,
    write_hf_checkpoint,
    write_sesame_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tied_reference() -> Any:
    return reference_model(seed=3, tie_embeddings=True)


@pytest.fixture(scope="module")
def both_layouts(tied_reference: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    hf = write_hf_checkpoint(tmp_path_factory.mktemp("hf"), tied_reference)
    sesame = write_sesame_checkpoint(tmp_path_factory.mktemp("sesame"), tied_reference)
    return hf, sesame


def prompt_logits(loaded: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    codes = torch.randint(0, 2048, (6, 32), generator=torch.Generator().manual_seed(0)).numpy()
    prompt = build_prompt(
        loaded.tokenizer, "the target", 1, [Segment(text="ctx", speaker=0, codes=codes)], 10
    )
    model = loaded.model
    model.setup_caches(1)
    with torch.no_grad():
        h = model.backbone_forward(
            model.embed_rows(prompt.tokens[None], prompt.mask[None]), torch.arange(len(prompt))[None]
        )
        c0 = torch.tensor([5])
        return model.codebook0_logits(h), model.depth_start(h[:, -1], c0)


def test_original_layout_loads_to_the_same_model(both_layouts: tuple[Path, Path]) -> None:
    hf_dir, sesame_dir = both_layouts
    assert detect_format(hf_dir) == "hf" and detect_format(sesame_dir) == "sesame"
    from_hf, from_sesame = load_model(str(hf_dir), device="cpu"), load_model(str(sesame_dir), device="cpu")
    for ours, theirs in zip(prompt_logits(from_sesame), prompt_logits(from_hf)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))
    # One shared audio table in the original layout: the loader does not duplicate it.
    assert from_sesame.model.decoder_embeddings.weight is from_sesame.model.audio_embeddings.weight
    # Kyutai-layout Mimi and the transformers-layout Mimi are the same codec.
    pcm = torch.randn(1920 * 3, generator=torch.Generator().manual_seed(0)).numpy() * 0.1
    codes = from_hf.codec.encode(pcm)
    assert torch.equal(from_sesame.codec.encode(pcm), codes)
    assert torch.equal(from_sesame.codec.decode(codes), from_hf.codec.decode(codes))
    assert from_sesame.tokenizer.encode_turn("hi", 0) == from_hf.tokenizer.encode_turn("hi", 0)


def test_local_dir_from_environment_replaces_the_download(
    both_layouts: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOCAL_DIR_ENV, str(both_layouts[1]))
    loaded = load_model("csm-1b-original", device="cpu")
    assert loaded.info["source"] == str(both_layouts[1])
    assert loaded.info["revision"] == PRESETS["csm-1b-original"].revision


def test_rope_permutation_turns_interleaved_rope_into_rotate_half() -> None:
    """Rotating q = W x with interleaved (complex-pair) RoPE equals rotating (P W) x with the
    rotate-half RoPE we run: the reason original q/k weights are permuted on load."""
    n_heads, head_dim, dim, t = 2, 8, 6, 5
    w = torch.randn(n_heads * head_dim, dim, dtype=torch.float64)
    x = torch.randn(t, dim, dtype=torch.float64)
    inv_freq = rope_inv_freq(head_dim, RopeConfig()).double()
    angles = torch.outer(torch.arange(t, dtype=torch.float64), inv_freq)  # (t, head_dim/2)
    q = (x @ w.T).view(t, n_heads, head_dim // 2, 2)
    rotated = torch.view_as_real(
        torch.view_as_complex(q.contiguous()) * torch.polar(torch.ones_like(angles), angles)[:, None]
    )
    interleaved = rotated.reshape(t, n_heads, head_dim)
    cos, sin = (f.double() for f in rope_tables(head_dim, RopeConfig(), t))
    q_half = (x @ permute_for_rope(w, n_heads).T).view(t, n_heads, head_dim).transpose(0, 1)[None]
    ours = apply_rope(q_half, cos[None], sin[None])[0].transpose(0, 1)
    # Same rotation, with each head's dims reordered (pairs (2i, 2i+1) → (i, i + head_dim/2)).
    assert torch.allclose(
        permute_for_rope(interleaved.reshape(t, -1).T, n_heads).T.reshape(t, n_heads, head_dim),
        ours,
        atol=1e-10,
    )
    assert torch.equal(unpermute_for_rope(permute_for_rope(w, n_heads), n_heads), w)


def test_layout_mappings_invert_each_other(tied_reference: Any) -> None:
    cfg = from_hf_config(tied_reference.config)
    hf = {k: v for k, v in tied_reference.state_dict().items() if not k.startswith("codec_model.")}
    back = sesame_to_hf(hf_to_sesame(hf, cfg), cfg)
    assert back.keys() == hf.keys() and all(torch.equal(back[k], hf[k]) for k in hf)
    again = internal_to_hf(hf_to_internal(hf, cfg), cfg)
    assert again.keys() == hf.keys() and all(torch.equal(again[k], hf[k]) for k in hf)
    codec = tied_reference.codec_model
    mimi = to_flat_keys(codec.state_dict())
    restored = moshi_to_hf_mimi(hf_mimi_to_moshi(mimi, codec), codec.config)
    assert restored.keys() == mimi.keys() and all(torch.equal(restored[k], mimi[k]) for k in mimi)


def test_original_layout_refuses_untied_decoder_embeddings() -> None:
    model = reference_model(seed=4)
    weights = dict(model.state_dict())
    decoder_table = "depth_decoder.model.embed_tokens.weight"
    weights[decoder_table] = weights[decoder_table] + 1.0  # a table of its own
    with pytest.raises(ValueError, match="one audio embedding table"):
        hf_to_sesame(weights, from_hf_config(model.config))


def test_released_rope_parameters_equal_the_original_ones() -> None:
    """sesame/csm-1b states llama3 RoPE scaling with rescaled factors; they give the original
    (factor 32, low 1, high 4, context 8192) frequencies."""
    original = rope_inv_freq(64, RopeConfig())
    for params in (HF_BACKBONE_ROPE, HF_DECODER_ROPE):
        torch.testing.assert_close(rope_inv_freq(64, RopeConfig.from_hf(params)), original, rtol=1e-6, atol=0)
    assert not torch.allclose(rope_inv_freq(64, RopeConfig(kind="default")), original)


@pytest.mark.parametrize(
    "preset,repo,revision",
    [
        ("csm-1b-original", "chutesai/csm-1b", "01e2ed64be01915391ec7881f666d6dda0e1d509"),
        ("csm-1b", "sesame/csm-1b", "main"),
    ],
)
def test_offline_without_weights_names_repo_revision_and_local_copy(
    preset: str, repo: str, revision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LOCAL_DIR_ENV, raising=False)
    with pytest.raises(ModelNotAvailableError) as err:
        load_model(preset, device="cpu")
    message = str(err.value)
    assert repo in message and revision in message
    assert "local_dir" in message and LOCAL_DIR_ENV in message


def test_bad_sources_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="built-in presets"):
        load_model("no-such-preset")
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_model("csm-1b", local_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="config.json"):
        detect_format(tmp_path)


def test_preset_files_are_valid_presets() -> None:
    files = sorted((REPO_ROOT / "configs" / "presets").glob("*.yaml"))
    assert files
    for path in files:
        preset = get_preset(str(path))
        assert preset.name == path.stem and preset.local_dir
        assert preset.repo_id == PRESETS[preset.name.removesuffix("-local")].repo_id


def test_tiny_config_follows_the_real_audio_geometry() -> None:
    assert (TINY_CONFIG.audio_vocab_size, TINY_CONFIG.num_codebooks, TINY_CONFIG.max_seq_len) == (
        2051,
        32,
        2048,
    )
