"""Weight layouts and the mappings between them.

Three layouts, always converted through the transformers one:
- transformers (`sesame/csm-1b`): `backbone_model.layers.N.self_attn.q_proj.weight`, ...;
  q/k rows in rotate-half RoPE order; separate depth-decoder input embeddings.
- original Sesame/torchtune (`chutesai/csm-1b`): `backbone.layers.N.attn.q_proj.weight`,
  `mlp.w1/w2/w3`, `sa_norm.scale`, ...; q/k rows in interleaved (complex) RoPE order, which
  transformers' convert script permutes; one audio embedding table shared with the decoder.
- ours (`CsmModel`): fused `wqkv` and `w13`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from serve_app.model.config import CsmModelConfig, TransformerConfig

# ---- original Sesame <-> transformers ---------------------------------------------------------
# The substitutions of transformers' convert_csm.py, anchored so that each applies once.
_SESAME_TO_HF = [
    (r"^backbone\.layers\.(\d+)\.", r"backbone_model.layers.\1."),
    (r"^decoder\.layers\.(\d+)\.", r"depth_decoder.model.layers.\1."),
    (r"\.attn\.", ".self_attn."),
    (r"\.output_proj\.", ".o_proj."),
    (r"\.mlp\.w1\.", ".mlp.gate_proj."),
    (r"\.mlp\.w2\.", ".mlp.down_proj."),
    (r"\.mlp\.w3\.", ".mlp.up_proj."),
    (r"\.sa_norm\.scale$", ".input_layernorm.weight"),
    (r"\.mlp_norm\.scale$", ".post_attention_layernorm.weight"),
    (r"^decoder\.norm\.scale$", "depth_decoder.model.norm.weight"),
    (r"^backbone\.norm\.scale$", "backbone_model.norm.weight"),
    (r"^text_embeddings\.", "embed_text_tokens."),
    (r"^audio_embeddings\.", "backbone_model.embed_tokens.embed_audio_tokens."),
    (r"^codebook0_head\.", "lm_head."),
    (r"^audio_head$", "depth_decoder.codebooks_head.weight"),
    (r"^projection\.", "depth_decoder.model.inputs_embeds_projector."),
]
_HF_TO_SESAME = [
    (r"^backbone_model\.layers\.(\d+)\.", r"backbone.layers.\1."),
    (r"^depth_decoder\.model\.layers\.(\d+)\.", r"decoder.layers.\1."),
    (r"\.self_attn\.", ".attn."),
    (r"\.o_proj\.", ".output_proj."),
    (r"\.mlp\.gate_proj\.", ".mlp.w1."),
    (r"\.mlp\.down_proj\.", ".mlp.w2."),
    (r"\.mlp\.up_proj\.", ".mlp.w3."),
    (r"\.input_layernorm\.weight$", ".sa_norm.scale"),
    (r"\.post_attention_layernorm\.weight$", ".mlp_norm.scale"),
    (r"^depth_decoder\.model\.norm\.weight$", "decoder.norm.scale"),
    (r"^backbone_model\.norm\.weight$", "backbone.norm.scale"),
    (r"^embed_text_tokens\.", "text_embeddings."),
    (r"^backbone_model\.embed_tokens\.embed_audio_tokens\.", "audio_embeddings."),
    (r"^lm_head\.", "codebook0_head."),
    (r"^depth_decoder\.codebooks_head\.weight$", "audio_head"),
    (r"^depth_decoder\.model\.inputs_embeds_projector\.", "projection."),
]
_DECODER_EMBED = "depth_decoder.model.embed_tokens.weight"
_AUDIO_EMBED = "backbone_model.embed_tokens.embed_audio_tokens.weight"
# Non-weight entries an original checkpoint may carry (torchtune caches and masks).
_SESAME_IGNORED = re.compile(r"(kv_cache|causal_mask|pos_embeddings|\.cache$|\.theta$)")


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def permute_for_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved (complex) RoPE rows → rotate-half rows, per head (the standard Llama permute)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def unpermute_for_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `permute_for_rope`."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _qk_heads(key: str, cfg: CsmModelConfig) -> int | None:
    stack = cfg.backbone if key.startswith("backbone_model.") else cfg.decoder
    if key.endswith("self_attn.q_proj.weight"):
        return stack.n_heads
    if key.endswith("self_attn.k_proj.weight"):
        return stack.n_kv_heads
    return None


def sesame_to_hf(sd: Mapping[str, torch.Tensor], cfg: CsmModelConfig) -> dict[str, torch.Tensor]:
    """Original Sesame layout → transformers layout (q/k rows permuted to rotate-half order)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if _SESAME_IGNORED.search(key):
            continue
        new = _rename(key, _SESAME_TO_HF)
        heads = _qk_heads(new, cfg)
        out[new] = permute_for_rope(value, heads) if heads else value
    if _AUDIO_EMBED in out:
        out[_DECODER_EMBED] = out[_AUDIO_EMBED]  # one shared table in the original model
    return out


def hf_to_sesame(sd: Mapping[str, torch.Tensor], cfg: CsmModelConfig) -> dict[str, torch.Tensor]:
    """transformers layout → original Sesame layout (codec weights dropped)."""
    if _DECODER_EMBED in sd and _AUDIO_EMBED in sd and not torch.equal(sd[_DECODER_EMBED], sd[_AUDIO_EMBED]):
        raise ValueError(
            "the original layout has one audio embedding table, but the backbone and "
            "depth decoder tables of this checkpoint differ"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key == _DECODER_EMBED or key.startswith("codec_model."):
            continue
        heads = _qk_heads(key, cfg)
        out[_rename(key, _HF_TO_SESAME)] = unpermute_for_rope(value, heads) if heads else value
    return out


# ---- transformers <-> ours ---------------------------------------------------------------------
_TOP_LEVEL = {
    "embed_text_tokens.weight": "text_embeddings.weight",
    _AUDIO_EMBED: "audio_embeddings.weight",
    _DECODER_EMBED: "decoder_embeddings.weight",
    "lm_head.weight": "codebook0_head.weight",
    "depth_decoder.codebooks_head.weight": "audio_head",
    "depth_decoder.model.inputs_embeds_projector.weight": "projection.weight",
    "backbone_model.norm.weight": "backbone.norm.weight",
    "depth_decoder.model.norm.weight": "decoder.norm.weight",
}
_LAYER_PARAMS = {
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
}
_STACKS = (("backbone_model.layers", "backbone.layers"), ("depth_decoder.model.layers", "decoder.layers"))


def _stack_cfg(our_prefix: str, cfg: CsmModelConfig) -> TransformerConfig:
    return cfg.backbone if our_prefix.startswith("backbone") else cfg.decoder


def hf_to_internal(sd: Mapping[str, torch.Tensor], cfg: CsmModelConfig) -> dict[str, torch.Tensor]:
    """transformers layout → `CsmModel` state dict (codec weights are ignored)."""
    # The two audio embedding tables are tied when `tie_codebooks_embeddings` is set; a
    # checkpoint may then carry either one of them (recent transformers saves only the decoder's).
    tied = {_AUDIO_EMBED, _DECODER_EMBED}
    missing = [k for k in _TOP_LEVEL if k not in sd and k not in tied]
    if not tied & sd.keys():
        missing.append(_AUDIO_EMBED)
    if missing:
        raise KeyError(f"checkpoint lacks {missing[:3]}{'...' if len(missing) > 3 else ''}")
    out = {ours: sd[hf] for hf, ours in _TOP_LEVEL.items() if hf in sd}
    out.setdefault("decoder_embeddings.weight", out.get("audio_embeddings.weight"))
    out.setdefault("audio_embeddings.weight", out["decoder_embeddings.weight"])
    for hf_prefix, our_prefix in _STACKS:
        for i in range(_stack_cfg(our_prefix, cfg).n_layers):
            src, dst = f"{hf_prefix}.{i}.", f"{our_prefix}.{i}."
            for hf, ours in _LAYER_PARAMS.items():
                out[dst + ours] = sd[src + hf]
            out[dst + "attention.wqkv.weight"] = torch.cat(
                [sd[src + f"self_attn.{p}_proj.weight"] for p in "qkv"], dim=0
            )
            out[dst + "feed_forward.w13.weight"] = torch.cat(
                [sd[src + "mlp.gate_proj.weight"], sd[src + "mlp.up_proj.weight"]], dim=0
            )
    return out


def internal_to_hf(sd: Mapping[str, torch.Tensor], cfg: CsmModelConfig) -> dict[str, torch.Tensor]:
    """`CsmModel` state dict → transformers layout (without codec weights)."""
    out = {hf: sd[ours].contiguous() for hf, ours in _TOP_LEVEL.items()}
    for hf_prefix, our_prefix in _STACKS:
        stack = _stack_cfg(our_prefix, cfg)
        for i in range(stack.n_layers):
            src, dst = f"{our_prefix}.{i}.", f"{hf_prefix}.{i}."
            for hf, ours in _LAYER_PARAMS.items():
                out[dst + hf] = sd[src + ours].contiguous()
            q, k, v = sd[src + "attention.wqkv.weight"].split([stack.q_dim, stack.kv_dim, stack.kv_dim])
            gate, up = sd[src + "feed_forward.w13.weight"].chunk(2)
            out.update(
                {
                    dst + "self_attn.q_proj.weight": q.contiguous(),
                    dst + "self_attn.k_proj.weight": k.contiguous(),
                    dst + "self_attn.v_proj.weight": v.contiguous(),
                    dst + "mlp.gate_proj.weight": gate.contiguous(),
                    dst + "mlp.up_proj.weight": up.contiguous(),
                }
            )
    return out


# ---- files -------------------------------------------------------------------------------------
def read_safetensors_dir(path: Path, skip_prefix: str | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint in `path`, minus `skip_prefix.*`."""
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {path}")
    out: dict[str, torch.Tensor] = {}
    for name in files:
        tensors = load_file(str(path / name))
        out.update(
            tensors
            if skip_prefix is None
            else {k: v for k, v in tensors.items() if not k.startswith(skip_prefix)}
        )
    return out


def read_sesame_weights(path: Path) -> dict[str, torch.Tensor]:
    """The original checkpoint: `model.safetensors` (hub mixin) or the first release's `ckpt.pt`."""
    if (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists():
        return read_safetensors_dir(path)
    if (path / "ckpt.pt").exists():
        sd = torch.load(path / "ckpt.pt", map_location="cpu", weights_only=True)
        return dict(sd.get("model", sd))
    raise FileNotFoundError(f"no model.safetensors or ckpt.pt in {path}")
