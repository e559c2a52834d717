"""CSM: a Llama backbone over 33-column rows plus a depth decoder over the 32 codebooks of a frame.

The batched API is what engines build on:

    model.setup_caches(max_batch_size)                       # slot caches, depth cache of 32 positions
    h = model.backbone_forward(model.embed_rows(tokens, mask), positions, slots)    # prefill
    c0 = sample(model.codebook0_logits(h_last))
    codes = model.depth_frame(h_last, c0, sampler)           # (B, 32)
    h = model.backbone_forward(model.embed_frame(codes)[:, None], next_positions, slots)  # step

`depth_start`/`depth_step` expose the 31 depth steps one at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from serve_app.model.config import CsmModelConfig
from serve_app.model.llama import Transformer

Sampler = Callable[[torch.Tensor, int], torch.Tensor]
"""(logits (B, V), codebook index 0..31) -> sampled ids (B,) long."""


class CsmModel(nn.Module):
    def __init__(self, cfg: CsmModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, dd, v, n = cfg.backbone.dim, cfg.decoder.dim, cfg.audio_vocab_size, cfg.num_codebooks
        self.text_embeddings = nn.Embedding(cfg.text_vocab_size, d)
        self.audio_embeddings = nn.Embedding(n * v, d)
        # The depth decoder's input embeddings: the same table in released checkpoints (then the
        # loader shares storage), but transformers keeps them as separate parameters.
        self.decoder_embeddings = nn.Embedding(n * v, d)
        self.backbone = Transformer(cfg.backbone, cfg.max_seq_len)
        self.codebook0_head = nn.Linear(d, v, bias=False)
        self.projection = nn.Linear(d, dd, bias=False)
        self.decoder = Transformer(cfg.decoder, cfg.decoder_seq_len)
        self.audio_head = nn.Parameter(torch.empty(n - 1, dd, v))
        self.register_buffer("audio_offsets", torch.arange(n) * v, persistent=False)
        self.max_batch_size = 0

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute non-persistent buffers (RoPE tables, codebook offsets), e.g. after meta init."""
        self.backbone.reset_rope(device)
        self.decoder.reset_rope(device)
        n, v = self.cfg.num_codebooks, self.cfg.audio_vocab_size
        self.register_buffer("audio_offsets", torch.arange(n, device=device) * v, persistent=False)

    # ---- caches -------------------------------------------------------------------------------
    def setup_caches(self, max_batch_size: int) -> None:
        """Allocate backbone caches for `max_batch_size` slots and a per-frame depth decoder cache."""
        p = self.codebook0_head.weight
        self.backbone.setup_caches(max_batch_size, p.dtype, p.device)
        self.decoder.setup_caches(max_batch_size, p.dtype, p.device)
        self.max_batch_size = max_batch_size

    @property
    def max_seq_len(self) -> int:
        return self.backbone.max_seq_len

    # ---- embeddings ---------------------------------------------------------------------------
    def embed_rows(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens, mask: (B, T, 33) → (B, T, D): the sum of the unmasked column embeddings."""
        n = self.cfg.num_codebooks
        audio = self.audio_embeddings(tokens[..., :n] + self.audio_offsets)
        audio = (audio * mask[..., :n, None].to(audio.dtype)).sum(dim=-2)
        text = self.text_embeddings(tokens[..., n]) * mask[..., n, None].to(audio.dtype)
        return audio + text

    def embed_frame(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, 32) → (B, D): the embedding of a generated audio row (no text column)."""
        return self.audio_embeddings(codes + self.audio_offsets).sum(dim=-2)

    # ---- backbone -----------------------------------------------------------------------------
    def backbone_forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor | None = None,
        kv_len: int | None = None,
    ) -> torch.Tensor:
        """embeds (B, T, D), positions (B, T) (< 0 = padding), slots (B,) or None for rows 0..B-1.

        Serves right- or left-padded prefill and the one-row step alike; returns the normed
        hidden states (B, T, D). `kv_len` bounds the attended cache window (a static bucket)."""
        return self.backbone(embeds, positions, slots, kv_len)

    def codebook0_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.codebook0_head(h)

    # ---- depth decoder ------------------------------------------------------------------------
    def _decoder_input(self, codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        return self.decoder_embeddings(codes + codebook * self.cfg.audio_vocab_size)

    def _audio_logits(self, h: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """h (B, Dd) → logits (B, V) of codebook `codebook` (1..31) through its own head."""
        return torch.matmul(h, self.audio_head.index_select(0, codebook - 1).squeeze(0))

    def depth_start(self, h_last: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        """Start a frame on a fresh decoder cache: positions 0 (backbone state) and 1 (codebook 0).

        h_last (B, D), c0 (B,) → logits of codebook 1 (B, V)."""
        b = h_last.shape[0]
        zero = torch.zeros(1, dtype=torch.long, device=c0.device)
        x = torch.stack([h_last, self._decoder_input(c0, zero)], dim=1)
        positions = torch.arange(2, device=c0.device).expand(b, 2)
        h = self.decoder(self.projection(x), positions, None, self.cfg.decoder_seq_len)
        return self._audio_logits(h[:, -1], zero + 1)

    def depth_step(self, prev_codes: torch.Tensor, codebook: int) -> torch.Tensor:
        """Feed codebook `codebook - 1` (B,) at position `codebook`; return logits of `codebook` (2..31)."""
        b = prev_codes.shape[0]
        idx = torch.full((1,), codebook, dtype=torch.long, device=prev_codes.device)
        x = self._decoder_input(prev_codes, idx - 1).unsqueeze(1)
        positions = idx.view(1, 1).expand(b, 1)
        h = self.decoder(self.projection(x), positions, None, self.cfg.decoder_seq_len)
        return self._audio_logits(h[:, 0], idx)

    def depth_frame(self, h_last: torch.Tensor, c0: torch.Tensor, sampler: Sampler) -> torch.Tensor:
        """Run the 31 depth steps: h_last (B, D), c0 (B,) → codes (B, 32)."""
        codes = [c0]
        logits = self.depth_start(h_last, c0)
        for i in range(1, self.cfg.num_codebooks):
            if i > 1:
                logits = self.depth_step(codes[-1], i)
            codes.append(sampler(logits, i))
        return torch.stack(codes, dim=1)

    def generate_frame(self, h_last: torch.Tensor, sampler: Sampler) -> torch.Tensor:
        """One whole frame from the backbone's last hidden state: (B, D) → codes (B, 32)."""
        c0 = sampler(self.codebook0_logits(h_last), 0)
        return self.depth_frame(h_last, c0, sampler)
