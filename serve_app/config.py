"""Model presets: where a model's weights, codec and tokenizer come from.

Built-in presets are below; a YAML file with the same fields (see `configs/presets/`) is a
preset too, so deployments can point at a mirror or a pinned revision without code changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

CheckpointFormat = Literal["hf", "sesame", "random"]
RandomGeometry = Literal["tiny", "csm-1b"]

LOCAL_DIR_ENV = "CSM_MODEL_DIR"
"""Environment variable naming a local copy of the preset's model repository."""


@dataclass(frozen=True)
class ModelPreset:
    name: str
    format: CheckpointFormat
    repo_id: str | None = None
    revision: str | None = None
    # Original-format extras: the codec and the text tokenizer live in other repositories.
    codec_repo_id: str | None = None
    codec_revision: str | None = None
    codec_filename: str | None = None
    tokenizer_repo_id: str | None = None
    tokenizer_revision: str | None = None
    local_dir: str | None = None  # a local copy of `repo_id` (e.g. a mounted volume): no download
    dtype: str | None = None  # None: bfloat16 on CUDA, float32 elsewhere
    seed: int = 0  # random weights only
    geometry: RandomGeometry = "tiny"  # random weights only: tiny widths or CSM-1B's full size
    description: str = ""

    def __post_init__(self) -> None:
        if self.format not in ("hf", "sesame", "random"):
            raise ValueError(f"preset {self.name!r}: unknown format {self.format!r}")
        if self.geometry not in ("tiny", "csm-1b"):
            raise ValueError(f"preset {self.name!r}: unknown geometry {self.geometry!r}")
        if self.format != "random" and not self.repo_id:
            raise ValueError(f"preset {self.name!r}: format {self.format!r} needs repo_id")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ModelPreset:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown preset fields: {unknown}")
        return cls(**data)


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            name="csm-1b",
            format="hf",
            repo_id="sesame/csm-1b",
            description="CSM-1B in the transformers layout: config, weights (incl. Mimi) and tokenizer in one repo",
        ),
        ModelPreset(
            name="csm-1b-original",
            format="sesame",
            repo_id="chutesai/csm-1b",
            revision="01e2ed64be01915391ec7881f666d6dda0e1d509",
            codec_repo_id="kyutai/moshiko-pytorch-bf16",
            codec_filename="tokenizer-e351c8d8-checkpoint125.safetensors",
            tokenizer_repo_id="meta-llama/Llama-3.2-1B",
            description="CSM-1B in the original Sesame layout, as the original deployment loads it",
        ),
        ModelPreset(
            name="tiny-random",
            format="random",
            seed=0,
            description="tiny seeded random weights with the real audio geometry; offline; output is noise",
        ),
        ModelPreset(
            name="csm-1b-random",
            format="random",
            geometry="csm-1b",
            seed=0,
            description="CSM-1B's full size (backbone, depth decoder, Mimi) with seeded random weights and "
            "an offline word-level tokenizer: the real model's speed without its weights; output is noise",
        ),
    )
}


def get_preset(name_or_file: str) -> ModelPreset:
    """A built-in preset by name, or a preset YAML file by path."""
    if name_or_file in PRESETS:
        return PRESETS[name_or_file]
    path = Path(name_or_file)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return load_preset_file(path)
    raise ValueError(f"unknown model preset {name_or_file!r}; built-in presets: {sorted(PRESETS)}")


def load_preset_file(path: str | Path) -> ModelPreset:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a preset file holds a mapping of preset fields")  # noqa: TRY004
    base = data.pop("base", None)
    if base is not None:  # start from another preset, override some fields
        data = {**asdict(get_preset(base)), **data}
    data.setdefault("name", Path(path).stem)
    return ModelPreset.from_mapping(data)
