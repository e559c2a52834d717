"""Geometry of the CSM model: backbone, depth decoder and the audio-code vocabulary.

One plain dataclass tree describes both checkpoint formats, so the model code never looks at a
transformers config or at the original Sesame `ModelArgs` directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters; `kind="llama3"` applies Llama-3.1 frequency scaling."""

    theta: float = 500_000.0
    kind: str = "llama3"  # "llama3" or "default"
    factor: float = 32.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    @classmethod
    def from_hf(cls, params: Mapping[str, Any]) -> RopeConfig:
        """From a transformers `rope_parameters` dict (already standardized by transformers)."""
        kind = params.get("rope_type", "default")
        if kind not in ("default", "llama3"):
            raise ValueError(f"unsupported rope_type {kind!r} (expected 'default' or 'llama3')")
        if kind == "default":
            return cls(theta=float(params["rope_theta"]), kind="default")
        return cls(
            theta=float(params["rope_theta"]),
            kind="llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )

    def to_hf(self) -> dict[str, Any]:
        if self.kind == "default":
            return {"rope_type": "default", "rope_theta": self.theta}
        return {
            "rope_type": "llama3",
            "rope_theta": self.theta,
            "factor": self.factor,
            "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
        }


@dataclass(frozen=True)
class TransformerConfig:
    """A Llama-style decoder stack (no embeddings, no output head)."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    norm_eps: float = 1e-5
    head_dim: int | None = None
    rope: RopeConfig = field(default_factory=RopeConfig)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError("n_heads must be a multiple of n_kv_heads")

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim  # type: ignore[operator]

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim  # type: ignore[operator]


@dataclass(frozen=True)
class CsmModelConfig:
    """Everything `CsmModel` needs; token ids are those of the Llama-3 text tokenizer."""

    backbone: TransformerConfig
    decoder: TransformerConfig
    text_vocab_size: int = 128_256
    audio_vocab_size: int = 2051  # per codebook: 2048 Mimi codes + 3 special ids
    num_codebooks: int = 32
    max_seq_len: int = 2048
    codec_codebook_size: int = 2048  # ids >= this are not Mimi codes and cannot be decoded
    codebook_eos_id: int = 0  # an all-`codebook_eos_id` frame ends the utterance

    @property
    def decoder_seq_len(self) -> int:
        """Positions the depth decoder uses per frame: backbone state + codebooks 0..30."""
        return self.num_codebooks


def from_hf_config(cfg: Any) -> CsmModelConfig:
    """Build from a transformers `CsmConfig` (object or its `to_dict()`)."""
    if isinstance(cfg, Mapping):
        from transformers import CsmConfig

        cfg = CsmConfig(**{k: v for k, v in cfg.items() if k != "transformers_version"})
    dd = cfg.depth_decoder_config
    if dd.backbone_hidden_size != cfg.hidden_size:
        raise ValueError("depth_decoder_config.backbone_hidden_size must equal hidden_size")
    if cfg.hidden_act != "silu" or dd.hidden_act != "silu":
        raise ValueError("only SiLU-gated MLPs are supported")
    if cfg.attention_bias or cfg.mlp_bias or dd.attention_bias or dd.mlp_bias:
        raise ValueError("biases in attention/MLP are not supported (CSM has none)")
    codec = getattr(cfg, "codec_config", None)
    return CsmModelConfig(
        backbone=TransformerConfig(
            dim=cfg.hidden_size,
            n_layers=cfg.num_hidden_layers,
            n_heads=cfg.num_attention_heads,
            n_kv_heads=cfg.num_key_value_heads,
            intermediate_size=cfg.intermediate_size,
            norm_eps=cfg.rms_norm_eps,
            head_dim=cfg.head_dim,
            rope=RopeConfig.from_hf(cfg.rope_parameters),
        ),
        decoder=TransformerConfig(
            dim=dd.hidden_size,
            n_layers=dd.num_hidden_layers,
            n_heads=dd.num_attention_heads,
            n_kv_heads=dd.num_key_value_heads,
            intermediate_size=dd.intermediate_size,
            norm_eps=dd.rms_norm_eps,
            head_dim=dd.head_dim,
            rope=RopeConfig.from_hf(dd.rope_parameters),
        ),
        text_vocab_size=cfg.text_vocab_size,
        audio_vocab_size=cfg.vocab_size,
        num_codebooks=cfg.num_codebooks,
        max_seq_len=cfg.max_position_embeddings,
        codec_codebook_size=getattr(codec, "codebook_size", 2048) if codec is not None else 2048,
        codebook_eos_id=cfg.codebook_eos_token_id if cfg.codebook_eos_token_id is not None else 0,
    )


# The original Sesame release builds its transformers from torchtune "flavors"; both use
# RoPE base 500000 with Llama-3 scaling (factor 32, low 1, high 4, original context 8192).
SESAME_FLAVORS: dict[str, TransformerConfig] = {
    "llama-1B": TransformerConfig(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, intermediate_size=8192),
    "llama-100M": TransformerConfig(dim=1024, n_layers=4, n_heads=8, n_kv_heads=2, intermediate_size=8192),
    # The tiny-random preset's stacks, so tiny checkpoints can be written in the original layout too.
    "tiny-64": TransformerConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=128),
    "tiny-32": TransformerConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=64),
}


def from_sesame_args(
    args: Mapping[str, Any], flavors: Mapping[str, TransformerConfig] | None = None
) -> CsmModelConfig:
    """Build from the original Sesame `ModelArgs` (the repo's config.json, optionally under "args")."""
    args = args.get("args", args)
    flavors = dict(SESAME_FLAVORS, **(flavors or {}))
    try:
        backbone = flavors[args["backbone_flavor"]]
        decoder = flavors[args["decoder_flavor"]]
    except KeyError as exc:
        raise ValueError(f"unknown Sesame model flavor {exc.args[0]!r}; known: {sorted(flavors)}") from None
    return CsmModelConfig(
        backbone=backbone,
        decoder=decoder,
        text_vocab_size=int(args["text_vocab_size"]),
        audio_vocab_size=int(args["audio_vocab_size"]),
        num_codebooks=int(args["audio_num_codebooks"]),
        max_seq_len=2048,
    )


def to_hf_config_dict(cfg: CsmModelConfig, codec_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The transformers `CsmConfig` keyword arguments describing `cfg` (used to write checkpoints)."""
    b, d = cfg.backbone, cfg.decoder
    out: dict[str, Any] = {
        "hidden_size": b.dim,
        "num_hidden_layers": b.n_layers,
        "num_attention_heads": b.n_heads,
        "num_key_value_heads": b.n_kv_heads,
        "intermediate_size": b.intermediate_size,
        "rms_norm_eps": b.norm_eps,
        "head_dim": b.head_dim,
        "rope_parameters": b.rope.to_hf(),
        "text_vocab_size": cfg.text_vocab_size,
        "vocab_size": cfg.audio_vocab_size,
        "num_codebooks": cfg.num_codebooks,
        "max_position_embeddings": cfg.max_seq_len,
        "codebook_eos_token_id": cfg.codebook_eos_id,
        "depth_decoder_config": {
            "hidden_size": d.dim,
            "num_hidden_layers": d.n_layers,
            "num_attention_heads": d.n_heads,
            "num_key_value_heads": d.n_kv_heads,
            "intermediate_size": d.intermediate_size,
            "rms_norm_eps": d.norm_eps,
            "head_dim": d.head_dim,
            "rope_parameters": d.rope.to_hf(),
            "backbone_hidden_size": b.dim,
            "num_codebooks": cfg.num_codebooks,
            "vocab_size": cfg.audio_vocab_size,
            "max_position_embeddings": cfg.num_codebooks + 1,
        },
    }
    if codec_config is not None:
        out["codec_config"] = dict(codec_config)
    return out
