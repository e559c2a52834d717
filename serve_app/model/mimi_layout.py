"""Where the parts of transformers' `MimiModel` live, across the transformers versions we support.

transformers up to 5.23 builds Mimi flat (`model.decoder.layers`, `model.decoder_transformer`,
`model.upsample`, ...). From 5.24 the model is split into halves (`model.decoder.decoder_seanet`,
`model.decoder.decoder_transformer`, `model.decoder.upsample`, and the same under `model.encoder`),
and its state dict keys follow. Checkpoints on the Hub keep the flat names. The streaming decoder
and the checkpoint loaders reach into those parts, so they ask this module instead of assuming one
layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# (flat prefix, split prefix) of every part that moved when Mimi was split into halves.
_FLAT_TO_SPLIT: tuple[tuple[str, str], ...] = (
    ("encoder.layers.", "encoder.encoder_seanet.layers."),
    ("encoder_transformer.", "encoder.encoder_transformer."),
    ("downsample.", "encoder.downsample."),
    ("upsample.", "decoder.upsample."),
    ("decoder_transformer.", "decoder.decoder_transformer."),
    ("decoder.layers.", "decoder.decoder_seanet.layers."),
)


@dataclass(frozen=True)
class MimiDecoderParts:
    """The decoder path from quantizer latents to audio, in the order it runs."""

    upsample: nn.Module | None
    transformer: nn.Module
    seanet_layers: list[nn.Module]


def is_split(mimi: Any) -> bool:
    """True for the split layout (transformers >= 5.24)."""
    return hasattr(mimi.decoder, "decoder_seanet")


def decoder_parts(mimi: Any) -> MimiDecoderParts:
    if is_split(mimi):
        half = mimi.decoder
        return MimiDecoderParts(half.upsample, half.decoder_transformer, list(half.decoder_seanet.layers))
    return MimiDecoderParts(mimi.upsample, mimi.decoder_transformer, list(mimi.decoder.layers))


def _renamed(
    state_dict: Mapping[str, torch.Tensor], pairs: tuple[tuple[str, str], ...]
) -> dict[str, torch.Tensor]:
    """Keys starting with a pair's first prefix get its second instead (first matching pair wins)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        old = next((old for old, _ in pairs if key.startswith(old)), None)
        out[key if old is None else dict(pairs)[old] + key[len(old) :]] = value
    return out


def to_flat_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mimi state dict in either layout → the flat names that checkpoints use."""
    return _renamed(state_dict, tuple((split, flat) for flat, split in _FLAT_TO_SPLIT))


def to_model_keys(mimi: Any, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mimi state dict in either layout → the names `mimi.load_state_dict` expects."""
    flat = to_flat_keys(state_dict)
    return _renamed(flat, _FLAT_TO_SPLIT) if is_split(mimi) else flat
