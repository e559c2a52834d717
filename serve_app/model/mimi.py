"""Mimi codec wrapper: mono float32 24 kHz PCM <-> (frames, 32) codes, 1920 samples per frame.

Runs transformers' `MimiModel` (the reference implementation) in fp32. Also converts Kyutai's
original (moshi) Mimi checkpoint, which the original Sesame release loads, to that layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from serve_app.constants import FRAME_SAMPLES, NUM_CODEBOOKS, SAMPLE_RATE
from serve_app.model.mimi_layout import decoder_parts, to_model_keys

PcmLike = np.ndarray | torch.Tensor


class MimiCodec:
    def __init__(self, model: Any, num_codebooks: int = NUM_CODEBOOKS) -> None:
        cfg = model.config
        if cfg.sampling_rate != SAMPLE_RATE or cfg.frame_size != FRAME_SAMPLES:
            raise ValueError(
                f"codec runs at {cfg.sampling_rate} Hz / {cfg.frame_size} samples per frame; "
                f"CSM needs {SAMPLE_RATE} Hz / {FRAME_SAMPLES}"
            )
        if num_codebooks > cfg.num_quantizers:
            raise ValueError(f"codec has {cfg.num_quantizers} codebooks, {num_codebooks} requested")
        self.model = model.eval()
        _drop_codebook_caches(model)
        self.num_codebooks = num_codebooks
        self.codebook_size: int = cfg.codebook_size
        self.sample_rate: int = cfg.sampling_rate
        self.frame_samples: int = cfg.frame_size
        self.frame_rate: float = float(cfg.frame_rate)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> MimiCodec:
        self.model.to(device=device, dtype=torch.float32)
        _drop_codebook_caches(self.model)
        return self

    # ---- encode -------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, pcm: PcmLike) -> torch.Tensor:
        """Mono audio (T,) → codes (ceil(T / 1920), 32) long on the codec's device."""
        x = torch.as_tensor(np.asarray(pcm, dtype=np.float32) if isinstance(pcm, np.ndarray) else pcm)
        if x.ndim != 1:
            raise ValueError(f"expected mono audio of shape (samples,), got {tuple(x.shape)}")
        if x.numel() == 0:
            return torch.zeros(0, self.num_codebooks, dtype=torch.long, device=self.device)
        x = x.to(self.device, torch.float32).view(1, 1, -1)
        codes = self.model.encode(x, num_quantizers=self.num_codebooks, return_dict=True).audio_codes
        return codes[0].transpose(0, 1).long()

    def encode_batch(self, pcms: Sequence[PcmLike]) -> list[torch.Tensor]:
        """One encode per clip: Mimi's encoder takes no padding mask, so padding would leak into the
        last frames of shorter clips."""
        return [self.encode(p) for p in pcms]

    # ---- decode -------------------------------------------------------------------------------
    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        codes = torch.as_tensor(codes)
        if codes.ndim != 2 or codes.shape[1] != self.num_codebooks:
            raise ValueError(
                f"expected codes of shape (frames, {self.num_codebooks}), got {tuple(codes.shape)}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        return codes.long()

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Codes (F, 32) → float32 PCM (F * 1920,) on the codec's device."""
        codes = self._check_codes(torch.as_tensor(codes))
        if codes.shape[0] == 0:
            return torch.zeros(0, dtype=torch.float32, device=self.device)
        audio = self.model.decode(codes.to(self.device).T.unsqueeze(0), return_dict=True).audio_values
        return audio[0, 0, : codes.shape[0] * self.frame_samples].float()

    @torch.inference_mode()
    def decode_batch(self, codes: Sequence[torch.Tensor | np.ndarray]) -> list[torch.Tensor]:
        """Decode several utterances in one call: right-pad with code 0 and trim each output.

        The decoder is causal (causal transposed convs, causal attention), so padding after an
        utterance does not change its samples."""
        checked = [self._check_codes(torch.as_tensor(c)) for c in codes]
        if not checked:
            return []
        longest = max(c.shape[0] for c in checked)
        if longest == 0:
            return [torch.zeros(0, dtype=torch.float32, device=self.device) for _ in checked]
        batch = torch.zeros(len(checked), self.num_codebooks, longest, dtype=torch.long, device=self.device)
        for i, c in enumerate(checked):
            batch[i, :, : c.shape[0]] = c.T.to(self.device)
        audio = self.model.decode(batch, return_dict=True).audio_values[:, 0]
        return [audio[i, : c.shape[0] * self.frame_samples].float() for i, c in enumerate(checked)]

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_state_dict(
        cls, config: Any, state_dict: Mapping[str, torch.Tensor], device: torch.device | str | None = None
    ) -> MimiCodec:
        from transformers import MimiModel

        model = MimiModel(config)
        model.load_state_dict(to_model_keys(model, state_dict), strict=True)
        return cls(model).to(device or "cpu")

    @classmethod
    @torch.no_grad()
    def random(cls, config: Any, seed: int = 0, peak: float = 0.5) -> MimiCodec:
        """A seeded random codec (offline tests and the tiny preset).

        Codebook entries are randomised (the default initialisation leaves them all zero, so
        every frame would encode to all-zero codes) and the last decoder conv is rescaled so that
        decoded noise peaks near `peak` instead of far outside [-1, 1]."""
        from transformers import MimiModel

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = MimiModel(config).eval()
            gen = torch.Generator().manual_seed(seed)
            for name, buf in model.named_buffers():
                if name.endswith("codebook.embed_sum"):
                    buf.copy_(torch.randn(buf.shape, generator=gen))
            _drop_codebook_caches(model)
            probe = torch.randint(0, config.codebook_size, (1, config.num_quantizers, 8), generator=gen)
            level = model.decode(probe, return_dict=True).audio_values.abs().max().clamp(min=1e-6)
            last = decoder_parts(model).seanet_layers[-1].conv
            last.weight.mul_(peak / level)
            if last.bias is not None:
                last.bias.mul_(peak / level)
        return cls(model)


def _drop_codebook_caches(model: Any) -> None:
    """transformers' Mimi codebooks cache their table on first use and do not follow `.to()`:
    drop the caches after weights move or change."""
    for module in model.modules():
        if hasattr(module, "_embed"):
            module._embed = None


# ---- Kyutai (moshi) checkpoint layout -> transformers ---------------------------------------------
# The substitutions of transformers' convert_mimi_checkpoint_to_pytorch.py, in order.
_MOSHI_TO_HF = [
    ("conv.conv.conv", "conv"),
    ("convtr.convtr.convtr", "conv"),
    ("conv.conv", "conv"),
    ("convtr.convtr", "conv"),
    ("quantizer.rvq_first.vq", "quantizer.semantic_residual_vector_quantizer"),
    ("quantizer.rvq_first", "quantizer.semantic_residual_vector_quantizer"),
    ("quantizer.rvq_rest.vq", "quantizer.acoustic_residual_vector_quantizer"),
    ("quantizer.rvq_rest", "quantizer.acoustic_residual_vector_quantizer"),
    ("_codebook", "codebook"),
    ("_initialized", "initialized"),
    ("embedding_sum", "embed_sum"),
    ("encoder.model", "encoder.layers"),
    ("decoder.model", "decoder.layers"),
    ("encoder_transformer.transformer", "encoder_transformer"),
    ("decoder_transformer.transformer", "decoder_transformer"),
    ("linear1", "mlp.fc1"),
    ("linear2", "mlp.fc2"),
    ("self_attn.out_proj", "self_attn.o_proj"),
    ("norm1", "input_layernorm"),
    ("norm2", "post_attention_layernorm"),
    ("layer_scale_1", "self_attn_layer_scale"),
    ("layer_scale_2", "mlp_layer_scale"),
]


def _rope_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def moshi_to_hf_mimi(sd: Mapping[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Kyutai's Mimi checkpoint (`tokenizer-e351c8d8-checkpoint125.safetensors`) → transformers' flat
    Mimi names (those of Hub checkpoints; `mimi_layout.to_model_keys` adapts them to the model).

    Fused `in_proj_weight` is split into q/k/v and q/k rows are permuted to rotate-half RoPE."""
    n_heads = config.hidden_size // config.head_dim
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = key
        for old, repl in _MOSHI_TO_HF:
            if old in new:
                new = new.replace(old, repl)
        if "in_proj_weight" in new:
            q, k, v = value.chunk(3, dim=0)
            out[new.replace("in_proj_weight", "q_proj.weight")] = _rope_permute(q, n_heads)
            out[new.replace("in_proj_weight", "k_proj.weight")] = _rope_permute(k, config.num_key_value_heads)
            out[new.replace("in_proj_weight", "v_proj.weight")] = v
        else:
            out[new] = value
    return out
