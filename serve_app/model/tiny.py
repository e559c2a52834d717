"""Seeded random models, fully offline; their audio is noise.

- `tiny-random`: real CSM/Mimi audio geometry (24 kHz, 12.5 fps, 32 codebooks of 2051 ids, 2048
  positions) with tiny transformer widths. Fast on CPU, and the source of the tiny checkpoints the
  tests write.
- `csm-1b-random`: CSM-1B's full geometry (Llama-1B backbone, 100M depth decoder, released Mimi
  geometry): the real model's cost on a GPU without its weights, for benchmarks and for running the
  production config on a machine that has no weights. Initialised on the device in seconds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from serve_app.model.config import SESAME_FLAVORS, CsmModelConfig

TINY_TEXT_VOCAB = 260  # the byte-level tiny tokenizer: 256 bytes + 4 special tokens

TINY_CONFIG = CsmModelConfig(
    backbone=SESAME_FLAVORS["tiny-64"],
    decoder=SESAME_FLAVORS["tiny-32"],
    text_vocab_size=TINY_TEXT_VOCAB,
)

TINY_MIMI_KWARGS: dict[str, Any] = {
    "sampling_rate": 24_000,
    "frame_rate": 12.5,
    "upsampling_ratios": [8, 6, 5, 4],
    "num_quantizers": 32,
    "codebook_size": 2048,
    "hidden_size": 32,
    "num_filters": 4,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 64,
    "codebook_dim": 8,
    "vector_quantization_hidden_dimension": 8,
    "upsample_groups": 32,
}


CSM_1B_CONFIG = CsmModelConfig(backbone=SESAME_FLAVORS["llama-1B"], decoder=SESAME_FLAVORS["llama-100M"])
"""CSM-1B's released geometry (the Llama-3 text vocabulary, 2048 positions)."""

RANDOM_GEOMETRIES: dict[str, CsmModelConfig] = {"tiny": TINY_CONFIG, "csm-1b": CSM_1B_CONFIG}


def tiny_mimi_config() -> Any:
    from transformers import MimiConfig

    return MimiConfig(**TINY_MIMI_KWARGS)


def mimi_config(geometry: str) -> Any:
    """The codec of a random geometry: tiny widths, or the released Mimi (transformers' defaults)."""
    from transformers import MimiConfig

    return tiny_mimi_config() if geometry == "tiny" else MimiConfig()


@torch.no_grad()
def init_random(model: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """Seeded N(0, std) weights, unit norms: the same init transformers uses for CSM.

    Drawn by a generator on the parameters' own device, so a model built on a GPU is filled there
    (the same seed gives the same weights on the same kind of device)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            p.copy_(torch.randn(p.shape, generator=gen, device=device) * std)
    return model


def random_model(
    cfg: CsmModelConfig = TINY_CONFIG,
    seed: int = 0,
    device: torch.device | str | None = None,
    std: float = 0.02,
) -> Any:
    """A `CsmModel` of geometry `cfg` with seeded random weights, allocated directly on `device`."""
    from serve_app.model.csm import CsmModel

    with torch.device("meta"):
        model = CsmModel(cfg)
    model = model.to_empty(device=device or "cpu")
    model.reset_buffers(device)
    return init_random(model, seed, std)
