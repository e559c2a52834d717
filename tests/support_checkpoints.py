"""Tiny checkpoints the tests write themselves (no weights can be downloaded).

The transformers `CsmForConditionalGeneration` is the oracle: it is built with tiny random
weights and the real audio geometry, saved with `save_pretrained` (the `sesame/csm-1b` layout),
and re-written in the original Sesame layout (the inverse mapping, RoPE permutation included)
with its Mimi in Kyutai's layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from serve_app.model.checkpoint import hf_to_sesame, unpermute_for_rope
from serve_app.model.config import from_hf_config, to_hf_config_dict
from serve_app.model.mimi import MimiCodec
from serve_app.model.mimi_layout import decoder_parts, to_flat_keys
from serve_app.model.tiny import TINY_CONFIG, TINY_MIMI_KWARGS
from serve_app.model.tokenizer import AUDIO_EOS_TOKEN, AUDIO_TOKEN, BOS_TOKEN, EOS_TOKEN, TextTokenizer

MOSHI_FILENAME = "tokenizer-e351c8d8-checkpoint125.safetensors"

# RoPE parameters as sesame/csm-1b's config.json states them (transformers' convert script rewrote
# the original factor 32 / low 1 / high 4 / context 8192 into these equivalent values).
HF_BACKBONE_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "high_freq_factor": 0.5,
    "low_freq_factor": 0.125,
    "original_max_position_embeddings": 1024,
}
HF_DECODER_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "high_freq_factor": 0.0078125,
    "low_freq_factor": 0.001953125,
    "original_max_position_embeddings": 16,
}

# transformers' CSM chat template (convert_csm.py), trimmed of its input validation.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- bos_token }}{{- '[' + message['role'] + ']' }}{{- message['content'][0]['text'] }}{{- eos_token }}"
    "{%- if message['content']|length > 1 %}{{- '<|AUDIO|><|audio_eos|>' }}{%- endif %}"
    "{%- endfor %}"
)


def tiny_token_ids() -> dict[str, int]:
    tok = TextTokenizer.tiny().backend
    return {
        "bos_token_id": tok.token_to_id(BOS_TOKEN),
        "pad_token_id": tok.token_to_id(EOS_TOKEN),
        "audio_token_id": tok.token_to_id(AUDIO_TOKEN),
        "audio_eos_token_id": tok.token_to_id(AUDIO_EOS_TOKEN),
    }


def tiny_hf_config() -> Any:
    from transformers import CsmConfig

    kwargs = to_hf_config_dict(TINY_CONFIG, codec_config={"model_type": "mimi", **TINY_MIMI_KWARGS})
    kwargs["rope_parameters"] = HF_BACKBONE_ROPE
    kwargs["depth_decoder_config"]["rope_parameters"] = HF_DECODER_ROPE
    return CsmConfig(**kwargs, **tiny_token_ids())


def reference_model(seed: int = 0, tie_embeddings: bool = False) -> Any:
    """The transformers CSM with seeded random weights (and a random, non-degenerate Mimi).

    `tie_embeddings` makes the depth decoder's input table equal the backbone's audio table, as
    in the released checkpoints (the original layout stores only one)."""
    from transformers import CsmForConditionalGeneration
    from transformers.utils import logging

    logging.set_verbosity_error()  # tiny token ids trip transformers' real-vocabulary sanity warnings
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CsmForConditionalGeneration(tiny_hf_config())
    model.codec_model = MimiCodec.random(model.config.codec_config, seed).model
    if tie_embeddings:
        with torch.no_grad():
            model.depth_decoder.model.embed_tokens.weight.copy_(
                model.backbone_model.embed_tokens.embed_audio_tokens.weight
            )
    return model.eval()


def tiny_processor() -> Any:
    """transformers' CsmProcessor over the tiny tokenizer (builds the oracle's inputs)."""
    from transformers import CsmProcessor, EncodecFeatureExtractor, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=TextTokenizer.tiny().backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )
    return CsmProcessor(
        EncodecFeatureExtractor(feature_size=1, sampling_rate=24_000), tok, chat_template=CHAT_TEMPLATE
    )


def write_hf_checkpoint(path: Path, model: Any) -> Path:
    """`save_pretrained` + the tiny tokenizer files: a local copy of a transformers-layout repo."""
    model.save_pretrained(str(path))
    TextTokenizer.tiny().save(path)
    return path


def hf_mimi_to_moshi(sd: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
    """Inverse of `moshi_to_hf_mimi`: transformers Mimi keys → Kyutai's, q/k/v fused and unpermuted."""
    cfg = model.config
    n_heads = cfg.hidden_size // cfg.head_dim
    sd = to_flat_keys(sd)
    transposed = {
        f"decoder.layers.{i}."
        for i, layer in enumerate(decoder_parts(model).seanet_layers)
        if type(layer).__name__ == "MimiConvTranspose1d"
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = key
        if new.startswith(("encoder.layers.", "decoder.layers.")):
            is_tr = any(new.startswith(p) and new.count(".") == 4 for p in transposed)
            new = new.replace(".conv.", ".convtr.convtr." if is_tr else ".conv.conv.")
            new = new.replace("encoder.layers.", "encoder.model.").replace(
                "decoder.layers.", "decoder.model."
            )
        elif new.startswith("downsample."):
            new = new.replace("downsample.conv.", "downsample.conv.conv.conv.")
        elif new.startswith("upsample."):
            new = new.replace("upsample.conv.", "upsample.convtr.convtr.convtr.")
        elif new.startswith(("encoder_transformer.", "decoder_transformer.")):
            stack, rest = new.split(".", 1)
            if rest.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight")):
                continue
            if rest.endswith("self_attn.q_proj.weight"):
                base = key[: -len("q_proj.weight")]
                q = unpermute_for_rope(sd[base + "q_proj.weight"], n_heads)
                k = unpermute_for_rope(sd[base + "k_proj.weight"], cfg.num_key_value_heads)
                value = torch.cat([q, k, sd[base + "v_proj.weight"]])
                rest = rest.replace("q_proj.weight", "in_proj_weight")
            for hf, moshi in (
                ("mlp.fc1", "linear1"),
                ("mlp.fc2", "linear2"),
                ("self_attn.o_proj", "self_attn.out_proj"),
                ("input_layernorm", "norm1"),
                ("post_attention_layernorm", "norm2"),
                ("self_attn_layer_scale", "layer_scale_1"),
                ("mlp_layer_scale", "layer_scale_2"),
            ):
                rest = rest.replace(hf, moshi)
            new = f"{stack}.transformer.{rest}"
        elif new.startswith("quantizer."):
            for hf, moshi in (
                ("semantic_residual_vector_quantizer", "rvq_first"),
                ("acoustic_residual_vector_quantizer", "rvq_rest"),
            ):
                new = new.replace(hf + ".layers.", moshi + ".vq.layers.").replace(hf, moshi)
            new = (
                new.replace(".codebook.", "._codebook.")
                .replace("._codebook.initialized", "._codebook._initialized")
                .replace("embed_sum", "embedding_sum")
            )
        out[new] = value.contiguous().clone()
    return out


def write_sesame_checkpoint(path: Path, model: Any) -> Path:
    """The same weights in the original layout: Sesame config + weights, Kyutai-layout Mimi (with a
    `mimi_config.json`, since the tiny codec is not the released geometry) and the tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = from_hf_config(model.config)
    weights = hf_to_sesame(model.state_dict(), cfg)
    save_file({k: v.contiguous().clone() for k, v in weights.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(
        json.dumps(
            {
                "backbone_flavor": "tiny-64",
                "decoder_flavor": "tiny-32",
                "text_vocab_size": cfg.text_vocab_size,
                "audio_vocab_size": cfg.audio_vocab_size,
                "audio_num_codebooks": cfg.num_codebooks,
            }
        )
    )
    codec = model.codec_model
    save_file(hf_mimi_to_moshi(codec.state_dict(), codec), str(path / MOSHI_FILENAME))
    codec.config.to_json_file(str(path / "mimi_config.json"))
    TextTokenizer.tiny().save(path)
    return path
