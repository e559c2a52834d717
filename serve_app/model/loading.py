"""One entry point from a preset name, preset file or local directory to a ready model.

    loaded = load_model("csm-1b")                       # transformers layout from the Hub
    loaded = load_model("csm-1b-original")              # original Sesame layout + Kyutai Mimi
    loaded = load_model("/models/csm-1b")               # a local copy (layout detected)
    loaded = load_model("tiny-random")                  # offline, seeded random weights
    loaded = load_model("csm-1b-random", "cuda")        # offline, CSM-1B's size, random weights

Files come through `huggingface_hub` (its cache, `HF_HUB_OFFLINE`, `HF_TOKEN` apply). Without
network or cache the error names the repository, the revision and how to point at a local copy.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from serve_app.config import LOCAL_DIR_ENV, ModelPreset, get_preset
from serve_app.model.checkpoint import hf_to_internal, read_safetensors_dir, read_sesame_weights, sesame_to_hf
from serve_app.model.config import CsmModelConfig, from_hf_config, from_sesame_args
from serve_app.model.csm import CsmModel
from serve_app.model.mimi import MimiCodec, moshi_to_hf_mimi
from serve_app.model.tokenizer import HashedWordTokenizer, TextTokenizer

logger = logging.getLogger(__name__)

T = TypeVar("T")

HF_MODEL_FILES = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
SESAME_MODEL_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "ckpt.pt"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


class ModelNotAvailableError(RuntimeError):
    """Weights could not be found locally or fetched from the Hub."""


@dataclass
class LoadedModel:
    model: CsmModel
    tokenizer: TextTokenizer | HashedWordTokenizer
    codec: MimiCodec
    info: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA, float32 elsewhere, unless given."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        resolved = getattr(torch, dtype)
    except AttributeError:
        resolved = None
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"unknown floating dtype {dtype!r}")
    return resolved


# ---- Hub access -----------------------------------------------------------------------------------
def _hub_call(repo_id: str, revision: str | None, fn: Callable[[], T]) -> T:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return fn()
    except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, OSError, ValueError) as exc:
        rev = revision or "main"
        raise ModelNotAvailableError(
            f"cannot get {repo_id} at revision {rev}: {type(exc).__name__}: {exc}. "
            f"Fetch it where the Hugging Face Hub is reachable (gated repos need HF_TOKEN), e.g. "
            f"`hf download {repo_id} --revision {rev} --local-dir /models/{repo_id.split('/')[-1]}`, "
            f"then pass local_dir=... to load_model or set {LOCAL_DIR_ENV}=..."
        ) from exc


def fetch_snapshot(repo_id: str, revision: str | None, allow_patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    return Path(
        _hub_call(
            repo_id,
            revision,
            lambda: snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns),
        )
    )


def fetch_file(repo_id: str, filename: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(_hub_call(repo_id, revision, lambda: hf_hub_download(repo_id, filename, revision=revision)))


# ---- building -------------------------------------------------------------------------------------
def build_model(
    cfg: CsmModelConfig, state_dict: Mapping[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> CsmModel:
    """A `CsmModel` from our-layout weights without first allocating random ones."""
    with torch.device("meta"):
        model = CsmModel(cfg)
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    if torch.equal(model.audio_embeddings.weight, model.decoder_embeddings.weight):
        model.decoder_embeddings.weight = model.audio_embeddings.weight  # share one table
    model.reset_buffers()
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def detect_format(path: Path) -> str:
    """'hf' (transformers CsmConfig) or 'sesame' (original ModelArgs) from a directory's config.json."""
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise ValueError(f"{path} has no config.json: not a CSM checkpoint directory")
    data = json.loads(cfg_file.read_text())
    if data.get("model_type") == "csm":
        return "hf"
    if "backbone_flavor" in data.get("args", data):
        return "sesame"
    raise ValueError(f"{cfg_file} is neither a transformers CSM config nor an original Sesame config")


def _load_hf(
    path: Path, device: torch.device, dtype: torch.dtype
) -> tuple[CsmModel, TextTokenizer, MimiCodec]:
    from transformers import CsmConfig

    hf_cfg = CsmConfig.from_pretrained(str(path))
    cfg = from_hf_config(hf_cfg)
    weights = read_safetensors_dir(path)
    codec_sd = {k[len("codec_model.") :]: v for k, v in weights.items() if k.startswith("codec_model.")}
    model = build_model(cfg, hf_to_internal(weights, cfg), device, dtype)
    del weights
    codec = MimiCodec.from_state_dict(hf_cfg.codec_config, codec_sd, device)
    return model, TextTokenizer.from_dir(path), codec


def _load_sesame(
    path: Path, preset: ModelPreset, device: torch.device, dtype: torch.dtype
) -> tuple[CsmModel, TextTokenizer, MimiCodec]:
    from safetensors.torch import load_file
    from transformers import MimiConfig

    cfg = from_sesame_args(json.loads((path / "config.json").read_text()))
    model = build_model(cfg, hf_to_internal(sesame_to_hf(read_sesame_weights(path), cfg), cfg), device, dtype)

    # A local copy may carry the codec file and the tokenizer next to the weights.
    codec_name = preset.codec_filename or "tokenizer-e351c8d8-checkpoint125.safetensors"
    codec_file = path / codec_name
    if not codec_file.exists():
        codec_file = fetch_file(
            preset.codec_repo_id or "kyutai/moshiko-pytorch-bf16", codec_name, preset.codec_revision
        )
    # Kyutai's file carries no config: the released Mimi geometry is transformers' default
    # MimiConfig; a `mimi_config.json` next to the weights overrides it.
    mimi_cfg_file = path / "mimi_config.json"
    mimi_cfg = MimiConfig.from_json_file(str(mimi_cfg_file)) if mimi_cfg_file.exists() else MimiConfig()
    codec = MimiCodec.from_state_dict(
        mimi_cfg, moshi_to_hf_mimi(load_file(str(codec_file)), mimi_cfg), device
    )

    tok_dir = path
    if not (path / "tokenizer.json").exists():
        tok_dir = fetch_snapshot(
            preset.tokenizer_repo_id or "meta-llama/Llama-3.2-1B", preset.tokenizer_revision, TOKENIZER_FILES
        )
    return model, TextTokenizer.from_dir(tok_dir), codec


def _load_random(
    preset: ModelPreset, device: torch.device, dtype: torch.dtype
) -> tuple[CsmModel, TextTokenizer | HashedWordTokenizer, MimiCodec]:
    from serve_app.model.tiny import RANDOM_GEOMETRIES, mimi_config, random_model

    cfg = RANDOM_GEOMETRIES[preset.geometry]
    # The tiny model keeps its CPU-drawn weights on every device (tests compare against them); the
    # full-size one is drawn on the device, in seconds rather than minutes.
    init_device = "cpu" if preset.geometry == "tiny" else device
    model = random_model(cfg, preset.seed, init_device).to(device=device, dtype=dtype)
    if preset.geometry != "tiny":  # one audio table for input and depth decoder, as released
        model.decoder_embeddings.weight = model.audio_embeddings.weight
    codec = MimiCodec.random(mimi_config(preset.geometry), preset.seed).to(device)
    tokenizer = (
        TextTokenizer.tiny() if preset.geometry == "tiny" else HashedWordTokenizer(cfg.text_vocab_size)
    )
    return model.eval().requires_grad_(False), tokenizer, codec


def load_model(
    preset_or_path: str,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    local_dir: str | Path | None = None,
) -> LoadedModel:
    """Load a preset (name or YAML file) or a local checkpoint directory.

    `revision` overrides the preset's; `local_dir` (else $CSM_MODEL_DIR, else the preset's
    `local_dir`) replaces the download of the main repository with a local copy."""
    dev = resolve_device(device)
    if Path(preset_or_path).is_dir():
        local_dir = Path(preset_or_path)
        fmt = detect_format(local_dir)
        preset = get_preset("csm-1b" if fmt == "hf" else "csm-1b-original")
        preset = ModelPreset(**{**preset.__dict__, "name": str(local_dir), "format": fmt})
    else:
        preset = get_preset(preset_or_path)
    torch_dtype = resolve_dtype(dtype if dtype is not None else preset.dtype, dev)
    rev = revision or preset.revision

    model: CsmModel
    tokenizer: TextTokenizer | HashedWordTokenizer
    if preset.format == "random":
        model, tokenizer, codec = _load_random(preset, dev, torch_dtype)
        source = None
        logger.warning("model %r has RANDOM weights: its audio is noise, not speech", preset.name)
    else:
        given = local_dir or os.environ.get(LOCAL_DIR_ENV) or preset.local_dir
        path = Path(given) if given else None
        if path is None:
            patterns = HF_MODEL_FILES if preset.format == "hf" else SESAME_MODEL_FILES
            path = fetch_snapshot(preset.repo_id, rev, patterns)  # type: ignore[arg-type]
        elif not path.is_dir():
            raise ModelNotAvailableError(f"local model directory {path} does not exist")
        if preset.format == "hf":
            model, tokenizer, codec = _load_hf(path, dev, torch_dtype)
        else:
            model, tokenizer, codec = _load_sesame(path, preset, dev, torch_dtype)
        source = str(path)

    info = {
        "model": preset.name,
        "format": preset.format,
        "repo_id": preset.repo_id,
        "revision": rev,
        "source": source,
        "device": str(dev),
        "dtype": str(torch_dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "max_seq_len": model.cfg.max_seq_len,
        "num_codebooks": model.cfg.num_codebooks,
        "sample_rate": codec.sample_rate,
        "frame_rate": codec.frame_rate,
    }
    return LoadedModel(model=model, tokenizer=tokenizer, codec=codec, info=info)
