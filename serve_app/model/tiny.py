"""The `tiny-random` model: real CSM/Mimi geometry (24 kHz, 12.5 fps, 32 codebooks of 2051 ids,
2048 positions) with tiny transformer widths and seeded random weights. Fully offline, fast on CPU,
and the source of the tiny checkpoints the tests write.
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


def tiny_mimi_config() -> Any:
    from transformers import MimiConfig

    return MimiConfig(**TINY_MIMI_KWARGS)


@torch.no_grad()
def init_random(model: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """Seeded N(0, std) weights, unit norms: the same init transformers uses for CSM."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def random_model(cfg: CsmModelConfig = TINY_CONFIG, seed: int = 0) -> Any:
    from serve_app.model.csm import CsmModel

    return init_random(CsmModel(cfg), seed)
