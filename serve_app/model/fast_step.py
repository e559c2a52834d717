"""The serving engine's model math: batched prefill, one backbone row per cache slot, a frame's depth loop.

Same weights and the same numerics as `CsmModel` (llama.py: fp32 RMSNorm, rotate-half RoPE, SDPA),
arranged so the decode step can be compiled and captured in CUDA graphs:

- In a decode step, batch row b *is* cache slot b, so each row's keys are read as a view of the
  cache (no gather copy); rows whose position is < 0 are idle slots: they write to the scratch
  column and attend key 0 only, so they stay finite and never touch a live slot.
- Grouped-query attention runs as SDPA over queries laid out (B, kv_heads, group * T, head_dim)
  against the un-expanded cache, so K/V are read once, never repeated per query head.
- The attended key window `kv_len` is a static bucket (the engine picks the smallest bucket above
  every live position); a per-row mask hides keys past each row's own position.
- The depth loop reads its inputs from a table of projected embeddings (one gather per step) and
  its codebook head as a view; the codebook index is a symbolic int under `torch.compile`, so one
  compiled step serves codebooks 2..31. Sampling is the host-sync-free counter-based sampler of
  `serve_app.engine.sampling`.
- On CUDA (with Triton) one-token attention (RoPE, cache write, attention over each row's own
  prefix) and the sampler are single Triton kernels (`serve_app.model.kernels`): the step is bound by
  kernel count, not bytes. Optionally, for batches up to `linear_max_batch`, the projections are
  Triton kernels too, with RMSNorm, SwiGLU and the residual adds fused into them, and the
  depth decoder's final norm rides in its codebook head. CPU runs the plain PyTorch path; tests
  check both agree.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from serve_app.engine.sampling import splitmix64
from serve_app.engine.types import NUM_CODEBOOKS
from serve_app.model.csm import CsmModel
from serve_app.model.kernels import MIN_FUSED_HEAD_DIM, fused_attention_supports, triton_available
from serve_app.model.llama import Block, Transformer, apply_rope

DEFAULT_LINEAR_MAX_BATCH = 0
"""Largest decode batch whose projections run through the fused Triton matmuls (default: none).
On an H200 the fused step beat the eager cuBLAS step at every batch from 1 to 128 rows (1.3-1.9x,
`benchmarks/results/2026-12-02-nvidia-h200-fused-linear.json`), but against the torch.compile'd
cuBLAS step it has only been compared across GPUs (about even), so it stays opt-in
(`EngineConfig.fused_linear_max_batch`)."""


def _attend(
    layer: Block,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    write_pos: torch.Tensor,
    mask: torch.Tensor,
    rows: torch.Tensor | None,
    kv_len: int,
) -> torch.Tensor:
    """One block over x (B, T, D); keys/values written at (row, write_pos), attended over [0, kv_len)."""
    attn = layer.attention
    cache = attn.kv_cache
    assert cache is not None, "KV caches are not set up: call model.setup_caches() first"
    b, t, _ = x.shape
    hkv, dh = attn.n_kv_heads, attn.head_dim
    group = attn.n_heads // hkv
    q, k, v = attn.wqkv(layer.attention_norm(x)).split(attn._split, dim=-1)
    q = apply_rope(q.view(b, t, attn.n_heads, dh).transpose(1, 2), cos, sin)
    k = apply_rope(k.view(b, t, hkv, dh).transpose(1, 2), cos, sin)
    v = v.view(b, t, hkv, dh).transpose(1, 2)
    idx = rows if rows is not None else torch.arange(b, device=x.device)
    cache.k[idx[:, None], :, write_pos] = k.transpose(1, 2)
    cache.v[idx[:, None], :, write_pos] = v.transpose(1, 2)
    if rows is None:
        keys, values = cache.k[:b, :, :kv_len], cache.v[:b, :, :kv_len]
    else:
        keys, values = cache.k[rows, :, :kv_len], cache.v[rows, :, :kv_len]
    # Query head h uses kv head h // group (transformers' repeat_kv order): fold the group into T.
    out = F.scaled_dot_product_attention(q.reshape(b, hkv, group * t, dh), keys, values, attn_mask=mask)
    out = out.reshape(b, attn.n_heads, t, dh).transpose(1, 2).reshape(b, t, -1)
    h = x + attn.wo(out)
    return h + layer.feed_forward(layer.ffn_norm(h))


def _attend_fused(layer: Block, x: torch.Tensor, positions: torch.Tensor, stack: Transformer) -> torch.Tensor:
    """`_attend` for one token per row through the fused Triton decode-attention kernel."""
    attn = layer.attention
    cache = attn.kv_cache
    assert cache is not None, "KV caches are not set up: call model.setup_caches() first"
    b = x.shape[0]
    qkv = attn.wqkv(layer.attention_norm(x)).view(b, -1)
    out = torch.ops.csm_serve.decode_attention(
        qkv, positions, stack.rope_cos, stack.rope_sin, cache.k, cache.v, attn.n_heads, attn.n_kv_heads
    )
    h = x + attn.wo(out).view(b, 1, -1)
    return h + layer.feed_forward(layer.ffn_norm(h))


def _block_fused_linear(
    layer: Block, x: torch.Tensor, positions: torch.Tensor, stack: Transformer
) -> torch.Tensor:
    """One block over x (B, D): norm+QKV, attention, output+residual, norm+gate/up+SwiGLU,
    down+residual (the long-K matmuls add a split-K reduce)."""
    attn, ff = layer.attention, layer.feed_forward
    linear = torch.ops.csm_serve.fused_linear
    an, fn = layer.attention_norm, layer.ffn_norm
    qkv = linear(x, attn.wqkv.weight, an.weight, None, an.eps, False)
    out = torch.ops.csm_serve.decode_attention(
        qkv,
        positions,
        stack.rope_cos,
        stack.rope_sin,
        attn.kv_cache.k,
        attn.kv_cache.v,
        attn.n_heads,
        attn.n_kv_heads,
    )
    h = linear(out, attn.wo.weight, None, x, 0.0, False)
    act = linear(h, ff.w13.weight, fn.weight, None, fn.eps, True)
    return linear(act, ff.w2.weight, None, h, 0.0, False)


def stack_forward(
    stack: Transformer,
    x: torch.Tensor,
    positions: torch.Tensor,
    kv_len: int,
    rows: torch.Tensor | None = None,
    fused: bool = False,
    fused_linear: bool = False,
    final_norm: bool = True,
) -> torch.Tensor:
    """Run `stack` over x (B, T, D) at `positions` (B, T) (< 0: padding or idle row).

    `rows` (B,) are the cache slots of the batch rows (prefill); None means rows 0..B-1 (decode).
    Every valid position must be < kv_len. `fused`: the one-token Triton attention; `fused_linear`:
    the fused Triton projections too. Returns the hidden states (B, T, D), final-normed unless
    `final_norm` is False (the caller fuses the norm into its head)."""
    b, t, _ = x.shape
    if fused:  # one new token per row = cache slot: the fused kernel reads each row's own prefix
        assert t == 1 and rows is None, "the fused decode attention takes one token per slot row"
        if fused_linear:
            h = x[:, 0]
            for layer in stack.layers:
                h = _block_fused_linear(layer, h, positions[:, 0], stack)
            x = h.unsqueeze(1)
        else:
            for layer in stack.layers:
                x = _attend_fused(layer, x, positions[:, 0], stack)
        return stack.norm(x) if final_norm else x
    hkv = stack.layers[0].attention.n_kv_heads
    group = stack.layers[0].attention.n_heads // hkv
    valid = positions >= 0
    write_pos = torch.where(valid, positions, stack.max_seq_len)
    query_pos = positions.clamp(min=0)
    cos = stack.rope_cos[query_pos].to(x.dtype)
    sin = stack.rope_sin[query_pos].to(x.dtype)
    keys = torch.arange(kv_len, device=x.device)
    mask = keys.view(1, 1, -1) <= query_pos.unsqueeze(-1)  # (B, T, L)
    mask = mask.unsqueeze(1).expand(b, group, t, kv_len).reshape(b, 1, group * t, kv_len)
    for layer in stack.layers:
        x = _attend(layer, x, cos, sin, write_pos, mask, rows, kv_len)
    return stack.norm(x) if final_norm else x


_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # SplitMix64's increment as an int64


def noise_columns(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Per-column hash offsets of the sampler's noise (`column * golden`, wrapping int64)."""
    return torch.arange(n, dtype=torch.long, device=device) * _GOLDEN


def sample_top_k(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    seeds: torch.Tensor,
    counters: torch.Tensor,
    columns: torch.Tensor,
) -> torch.Tensor:
    """`serve_app.engine.sampling.sample_top_k` with its noise column offsets read from `columns`
    (`noise_columns(vocab_limit)`), so the same draw compiles: inductor cannot lower a 64-bit
    constant times a column index. Bit-identical ids (tested)."""
    logits = logits[:, : columns.shape[0]]
    scores = logits.float() / temperature.float().unsqueeze(1)
    v = scores.shape[1]
    kth = torch.topk(scores, v, dim=-1).values.gather(1, (top_k.clamp(1, v) - 1).unsqueeze(1))
    scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    key = splitmix64(splitmix64(seeds.long()) + counters.long())
    bits = (splitmix64(key[:, None] + columns[None, :]) >> 40) & ((1 << 24) - 1)
    race = -torch.log((bits.float() + 0.5) * (1.0 / (1 << 24)))
    sampled = torch.argmax(probs / race, dim=-1)
    greedy = torch.argmax(scores, dim=-1)
    return torch.where(top_k == 1, greedy, sampled)


class FastStep:
    """Prefill, backbone decode step and depth frame over one `CsmModel`'s weights and caches.

    Plain PyTorch callables; the runner may wrap `backbone_step`, `frame_start` and `depth_step` in
    `torch.compile` (see `compile`) and capture them in CUDA graphs."""

    def __init__(
        self,
        model: CsmModel,
        vocab_limit: int | None = None,
        fused_attention: bool | None = None,
        linear_max_batch: int | None = None,
    ) -> None:
        """`fused_attention`: one-token attention and the sampler through Triton kernels (default: on
        CUDA with Triton). `linear_max_batch`: decode batches up to this size also run the fused
        Triton projections (default `DEFAULT_LINEAR_MAX_BATCH`; always 0 without fused attention)."""
        self.model = model
        self.vocab_limit = vocab_limit
        self.num_codebooks = model.cfg.num_codebooks
        self.vocab = model.cfg.audio_vocab_size
        # Every (codebook, id) input of the depth decoder, already projected to its width: one row
        # gather per step instead of an embedding lookup plus a matmul.
        with torch.no_grad():
            self.depth_inputs = model.projection(model.decoder_embeddings.weight)
        device = model.codebook0_head.weight.device
        self.noise_columns = noise_columns(vocab_limit or self.vocab, device)
        head_dims = (model.cfg.backbone.head_dim, model.cfg.decoder.head_dim)
        if fused_attention is None:
            fused_attention = (
                device.type == "cuda" and triton_available() and fused_attention_supports(*head_dims)
            )
        elif fused_attention and not fused_attention_supports(*head_dims):
            raise ValueError(
                f"fused attention needs even head sizes >= {MIN_FUSED_HEAD_DIM}, got {head_dims}"
            )
        if fused_attention:
            import serve_app.model.kernels.decode_attention
            import serve_app.model.kernels.fused_linear
            import serve_app.model.kernels.sampling  # noqa: F401
        self.fused = fused_attention
        if linear_max_batch is None:
            linear_max_batch = DEFAULT_LINEAR_MAX_BATCH
        self.linear_max_batch = linear_max_batch if fused_attention else 0  # they share the fused step
        self.depth_positions = torch.arange(model.cfg.decoder_seq_len, device=device)
        self._prefill: Callable[..., torch.Tensor] = self.prefill
        self._backbone_step: Callable[..., torch.Tensor] = self.backbone_step
        self._frame_start: Callable[..., tuple[torch.Tensor, torch.Tensor]] = self.frame_start
        self._depth_step: Callable[..., torch.Tensor] = self.depth_step

    def compile(self, mode: str | None = None) -> None:
        """Compile prefill and the three step functions (dynamic batch, length and key window)."""
        options = {"dynamic": True, "fullgraph": True, "mode": mode}
        self._backbone_step = torch.compile(self.backbone_step, **options)  # type: ignore[arg-type]
        self._frame_start = torch.compile(self.frame_start, **options)  # type: ignore[arg-type]
        self._depth_step = torch.compile(self.depth_step, **options)  # type: ignore[arg-type]
        self._prefill = torch.compile(self.prefill, **options)  # type: ignore[arg-type]

    # ---- prefill ------------------------------------------------------------------------------
    def prefill(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        kv_len: int,
    ) -> torch.Tensor:
        """Write the KV of right-padded prompt rows (B, T, 33) into cache `slots`; returns hidden (B, T, D)."""
        m = self.model
        return stack_forward(m.backbone, m.embed_rows(tokens, mask), positions, kv_len, rows=slots)

    # ---- decode step --------------------------------------------------------------------------
    def fused_linear_for(self, batch: int) -> bool:
        """Whether a decode step of `batch` rows runs the fused Triton projections."""
        return self.fused and batch <= self.linear_max_batch

    def backbone_step(self, embeds: torch.Tensor, positions: torch.Tensor, kv_len: int) -> torch.Tensor:
        """embeds (B, D) at positions (B,) of slots 0..B-1 → last hidden state (B, D)."""
        h = stack_forward(
            self.model.backbone,
            embeds.unsqueeze(1),
            positions.unsqueeze(1),
            kv_len,
            fused=self.fused,
            fused_linear=self.fused_linear_for(embeds.shape[0]),
        )
        return h[:, 0]

    def _sample(
        self,
        logits: torch.Tensor,
        codebook: torch.Tensor | int,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        seeds: torch.Tensor,
        frame: torch.Tensor,
    ) -> torch.Tensor:
        if self.fused:
            return torch.ops.csm_serve.sample_top_k(
                logits, temperature, top_k, seeds, frame, codebook, self.noise_columns
            )
        counters = frame * NUM_CODEBOOKS + codebook
        return sample_top_k(logits, temperature, top_k, seeds, counters, self.noise_columns)

    def _depth(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Depth decoder over projected inputs x (B, T, depth dim) at positions start.. (all rows)."""
        b, t, _ = x.shape
        positions = (torch.arange(t, device=x.device) + start).expand(b, t)
        fused = self.fused and t == 1
        return stack_forward(self.model.decoder, x, positions, self.model.cfg.decoder_seq_len, fused=fused)

    def frame_start(
        self,
        h: torch.Tensor,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        seeds: torch.Tensor,
        frame: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Codebook 0 from the backbone state h (B, D), then codebook 1 on a fresh depth cache."""
        m = self.model
        c0 = self._sample(m.codebook0_logits(h), 0, temperature, top_k, seeds, frame)
        x = torch.stack([m.projection(h), self.depth_inputs[c0]], dim=1)
        out = self._depth(x, 0)[:, -1]
        c1 = self._sample(torch.matmul(out, m.audio_head[0]), 1, temperature, top_k, seeds, frame)
        return c0, c1

    def depth_step(
        self,
        prev: torch.Tensor,
        codebook: int,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        seeds: torch.Tensor,
        frame: torch.Tensor,
    ) -> torch.Tensor:
        """Feed codebook `codebook - 1`'s ids `prev` (B,) at depth position `codebook` (2..31) and
        sample codebook `codebook`. Compiled with a symbolic `codebook`, so one graph serves all."""
        m = self.model
        x = self.depth_inputs[prev + (codebook - 1) * self.vocab].unsqueeze(1)
        b = x.shape[0]
        if self.fused_linear_for(b):
            # One step in 22 launches: the depth position is a view of a constant table, and the
            # final norm runs inside the codebook head (a transposed view of the (dim, vocab) head).
            positions = self.depth_positions[codebook : codebook + 1].expand(b, 1)
            out = stack_forward(
                m.decoder,
                x,
                positions,
                m.cfg.decoder_seq_len,
                fused=True,
                fused_linear=True,
                final_norm=False,
            )
            head = m.audio_head[codebook - 1].t()[: self.noise_columns.shape[0]]
            norm = m.decoder.norm
            logits = torch.ops.csm_serve.fused_linear(out[:, 0], head, norm.weight, None, norm.eps, False)
        else:
            out = self._depth(x, codebook)[:, 0]
            logits = torch.matmul(out, m.audio_head[codebook - 1])
        return self._sample(logits, codebook, temperature, top_k, seeds, frame)

    def depth_frame(
        self,
        h: torch.Tensor,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        seeds: torch.Tensor,
        frame: torch.Tensor,
    ) -> torch.Tensor:
        """A whole frame from backbone states h (B, D): codes (B, 32)."""
        c0, c = self._frame_start(h, temperature, top_k, seeds, frame)
        codes = [c0, c]
        for i in range(2, self.num_codebooks):
            c = self._depth_step(c, i, temperature, top_k, seeds, frame)
            codes.append(c)
        return torch.stack(codes, dim=1)
