"""Tiny random Mimi models for the streaming-decoder tests and benchmark.

The real sample rate, frame rate, 32 codebooks and upsampling ratios are kept, so one frame is 1920
samples; only widths, depths and the attention window shrink. transformers initialises codebooks to
zero, linear layers with std 0.02 and layer scales to 0.01, which would make the transformer nearly
invisible in a comparison, so all three are redrawn here, and the output is scaled to unit std like
real audio so that absolute tolerances mean the same for every variant.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import MimiConfig, MimiModel

from serve_app.model.mimi_layout import decoder_parts


def tiny_mimi_config(**overrides: Any) -> MimiConfig:
    params: dict[str, Any] = {
        "hidden_size": 32,
        "num_filters": 2,
        "num_hidden_layers": 2,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "codebook_size": 64,
        "codebook_dim": 16,
        "vector_quantization_hidden_dimension": 16,
        "upsample_groups": 32,
        "sliding_window": 6,
    }
    params.update(overrides)
    return MimiConfig(**params)


def random_mimi(config: MimiConfig, seed: int = 0) -> MimiModel:
    """A MimiModel with random weights in which every decoder part moves the output."""
    torch.manual_seed(seed)
    model = MimiModel(config).eval()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("embed_sum"):
                buffer.normal_()
        for name, param in model.named_parameters():
            if name.endswith("layer_scale.scale"):
                param.uniform_(0.5, 1.0)
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5)
        last = decoder_parts(model).seanet_layers[-1].conv
        scale = model.decode(random_codes(2, 4, config, seed=seed))[0].std()
        last.weight.div_(scale)
        last.bias.div_(scale)
    return model


def random_codes(batch: int, frames: int, config: MimiConfig, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.codebook_size, (batch, config.num_quantizers, frames), generator=generator)


def full_decode(mimi: MimiModel, codes: torch.Tensor) -> torch.Tensor:
    """transformers' whole-sequence decode of codes (B, K, T): the reference every stream must equal."""
    with torch.no_grad():
        return mimi.decode(codes)[0][:, 0]
