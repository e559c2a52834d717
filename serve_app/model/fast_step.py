"""The serving engine's model math: batched prefill, one backbone row per cache slot, a frame's depth loop.

Same weights and the same blocks as `CsmModel` (`serve_app.model.llama`), arranged so the decode step
can be compiled and captured in CUDA graphs:

- In a decode step, batch row b *is* cache slot b, so each row's keys are read as a view of the
  cache (no gather copy); rows whose position is < 0 are idle slots (padding, as `llama` defines it).
- The attended key window `kv_len` is a static bucket (the engine picks the smallest bucket above
  every live position).
- The depth loop reads its inputs from a table of projected embeddings (one gather per step, which
  the fused sampler does itself as it draws the ids) and its codebook head as a view; the codebook
  index is a symbolic int under `torch.compile`, so one compiled step serves codebooks 2..31. Sampling is the host-sync-free counter-based sampler of
  `serve_app.model.sampling`.
- On CUDA (with Triton) one-token steps run the fused backends (`serve_app.model.kernels.backends`):
  attention (RoPE, cache write, attention over each row's own prefix) and the sampler are single
  Triton kernels, since the step is bound by kernel count, not bytes. For batches up to
  `linear_max_batch` the projections are Triton kernels too, with RMSNorm, SwiGLU and the residual
  adds fused into them (larger batches: cuBLAS's matmuls and eager PyTorch around them), and so do
  prefills of up to `PREFILL_FUSED_MAX_ROWS` prompt rows. Either way the depth decoder's final norm
  rides with its codebook head. CPU runs the eager backend; tests check both agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from serve_app.model.csm import CsmModel
from serve_app.model.kernels import MIN_FUSED_HEAD_DIM, fused_attention_supports, triton_available
from serve_app.model.llama import EAGER, Backend
from serve_app.model.sampling import draw_counter, noise_columns, sample_top_k

if TYPE_CHECKING:
    from serve_app.model.kernels.depth_loop import DepthLoop

DEFAULT_LINEAR_MAX_BATCH = 0
"""Largest decode batch whose projections run through the fused Triton matmuls (default: none).
On an H200 the fused step beat the eager cuBLAS step at every batch from 1 to 128 rows (1.3-1.9x,
`benchmarks/results/2026-12-02-nvidia-h200-fused-linear.json`), but against the torch.compile'd
cuBLAS step it has only been compared across GPUs (about even), so it stays opt-in
(`EngineConfig.fused_linear_max_batch`)."""


PREFILL_FUSED_MAX_ROWS = 256
"""Prefills of up to this many prompt rows (batch x width, padding included) run the fused Triton
projections when the decode step does (`linear_max_batch`): RMSNorm, SwiGLU and the residual adds
inside the matmuls, as in the step, where cuBLAS's matmuls left five more kernels a norm and two a
layer around them. The kernels' tiles are swept for up to 256 rows; longer prompts keep cuBLAS."""


SAMPLER_COPIES_INPUTS = True
"""Whether the fused sampler copies the next depth step's input rows as it draws the ids
(`kernels.sampling.sample_top_k_embed`), instead of an offset add and a gather launched between it
and the step's first projection: two launches fewer a depth step, 60 a frame."""


FUSED_FRAME_START = True
"""Whether a frame's first depth pass (codebook 0's projected state and its ids' row, positions 0
and 1) runs through the fused kernels as two prompt rows of each slot (the projections, the
prompt-attention kernel, the final norm with the codebook head: about 26 launches), where the fused
projections run, instead of the eager depth decoder over two positions (cuBLAS, SDPA and the
norm, RoPE and cache pieces around them: about a hundred small kernels)."""


DEPTH_LOOP = True
"""Whether a one-row frame runs codebooks 2..31 as one persistent launch (`kernels.depth_loop`)
where the fused kernels run, instead of 30 depth steps of 18 launches each. On an H100, one row,
off → on: the graphed decode step 6.63 → 6.16 ms a frame (`bench_fused_linear.py --variants
shipped,step_launches`, `benchmarks/results/2026-12-06-0940-nvidia-h100-80gb-hbm3-depth-loop-variants.json`);
the engine's frame 6.55 → 5.97 ms and its idle first audio 14.4 → 18.1 ms (the loop fills every SM,
so the first chunk's audio decode beside the next frame waits for it: `depth_loop.SPARE_PROGRAMS`),
`…-1009-…-engine-depth-loop-{off,on}.json`."""


PREFILL_ATTENTIONS = ("sdpa", "kernel")
"""How a fused prefill attends: SDPA over the slot cache (with the RoPE, scatter and gather pieces
around it), or the decode-attention kernel, each token a row over its slot (two launches a layer)."""


class FastStep:
    """Prefill, backbone decode step and depth frame over one `CsmModel`'s weights and caches.

    `prefill`, `backbone_step` and `depth_frame` are the whole interface; after `compile()` they run
    the `torch.compile`d step functions, and a caller may capture them in CUDA graphs."""

    def __init__(
        self,
        model: CsmModel,
        vocab_limit: int | None = None,
        fused_attention: bool | None = None,
        linear_max_batch: int | None = None,
        prefill_fused_rows: int | None = None,
        prefill_attention: str = "sdpa",
    ) -> None:
        """`fused_attention`: one-token attention and the sampler through Triton kernels (default: on
        CUDA with Triton). `linear_max_batch`: decode batches up to this size also run the fused
        Triton projections (default `DEFAULT_LINEAR_MAX_BATCH`; always 0 without fused attention),
        and so do prefills of up to `prefill_fused_rows` prompt rows (default `PREFILL_FUSED_MAX_ROWS`;
        0: none), attending as `prefill_attention` says (`PREFILL_ATTENTIONS`)."""
        if prefill_attention not in PREFILL_ATTENTIONS:
            raise ValueError(f"prefill_attention must be one of {PREFILL_ATTENTIONS}, got {prefill_attention!r}")
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
        self.fused = fused_attention
        self.one_token: Backend = EAGER  # the backend of one-token steps with cuBLAS's projections
        self.fused_projections: Backend = EAGER  # ... and with them
        self.fused_prefill: Backend = EAGER  # prompts with them
        self._rows_backend: Backend | None = None  # rows in any slots (`backbone_step_with_prompts`)
        if fused_attention:
            import serve_app.model.kernels.sampling  # noqa: F401 - registers csm_serve::sample_top_k
            from serve_app.model.kernels.backends import (
                FUSED,
                FUSED_ATTENTION,
                FUSED_PREFILL,
                FUSED_PREFILL_KERNELS,
            )

            self.one_token, self.fused_projections = FUSED_ATTENTION, FUSED
            self.fused_prefill = FUSED_PREFILL_KERNELS if prefill_attention == "kernel" else FUSED_PREFILL
            self._rows_backend = FUSED_PREFILL_KERNELS
        self.prefill_attention = prefill_attention
        if linear_max_batch is None:
            linear_max_batch = DEFAULT_LINEAR_MAX_BATCH
        self.linear_max_batch = linear_max_batch if fused_attention else 0  # they share the fused step
        if prefill_fused_rows is None:
            prefill_fused_rows = PREFILL_FUSED_MAX_ROWS
        self.prefill_fused_rows = prefill_fused_rows if self.linear_max_batch else 0
        if self.linear_max_batch:
            from serve_app.model.kernels.fused_linear import reserve_tile_locks

            reserve_tile_locks(device)  # before any CUDA graph of the step is captured
        self.depth_positions = torch.arange(model.cfg.decoder_seq_len, device=device)
        self._depth_loop = self._make_depth_loop()
        self._prefill: Callable[..., torch.Tensor] = self._prefill_eager
        self._backbone_step: Callable[..., torch.Tensor] = self._backbone_step_eager
        self._frame_start: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = (
            self._frame_start_eager
        )
        self._depth_step: Callable[..., tuple[torch.Tensor, torch.Tensor | None]] = self._depth_step_eager

    def _make_depth_loop(self) -> DepthLoop | None:
        """The one-row frame's persistent depth loop, where it runs (`DEPTH_LOOP`): the fused
        kernels at one row and the frame start's two, the sampler copying the next inputs."""
        if not (DEPTH_LOOP and SAMPLER_COPIES_INPUTS and self.fused and self.fused_linear_for(2)):
            return None
        from serve_app.model.kernels import depth_loop

        m = self.model
        geo = depth_loop.geometry(m.decoder, self.vocab, self.noise_columns.shape[0])
        if not depth_loop.supports(geo):
            return None
        return depth_loop.DepthLoop(m.decoder, m.audio_head, self.depth_inputs, self.noise_columns)

    def one_launch_frame(self, batch: int) -> bool:
        """Whether a frame of `batch` rows runs codebooks 2..31 as one persistent launch."""
        return self._depth_loop is not None and batch == 1

    def compile(self, mode: str | None = None) -> None:
        """Compile prefill and the three step functions (dynamic batch, length and key window)."""
        options = {"dynamic": True, "fullgraph": True, "mode": mode}
        self._backbone_step = torch.compile(self._backbone_step_eager, **options)  # type: ignore[arg-type]
        self._frame_start = torch.compile(self._frame_start_eager, **options)  # type: ignore[arg-type]
        self._depth_step = torch.compile(self._depth_step_eager, **options)  # type: ignore[arg-type]
        self._prefill = torch.compile(self._prefill_eager, **options)  # type: ignore[arg-type]

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
        return self._prefill(tokens, mask, positions, slots, kv_len)

    def _prefill_eager(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        kv_len: int,
    ) -> torch.Tensor:
        m = self.model
        backend = self.fused_prefill if self.prefill_fused_for(*tokens.shape[:2]) else EAGER
        return m.backbone(m.embed_rows(tokens, mask), positions, slots, kv_len, backend)

    def prefill_fused_for(self, batch: int, width: int) -> bool:
        """Whether a prefill of `batch` prompts padded to `width` rows runs the fused projections."""
        return batch * width <= self.prefill_fused_rows

    # ---- decode step --------------------------------------------------------------------------
    def fused_linear_for(self, batch: int) -> bool:
        """Whether a decode step of `batch` rows runs the fused Triton projections."""
        return self.fused and batch <= self.linear_max_batch

    def _step_backend(self, batch: int) -> Backend:
        return self.fused_projections if self.fused_linear_for(batch) else self.one_token

    def backbone_step(self, embeds: torch.Tensor, positions: torch.Tensor, kv_len: int) -> torch.Tensor:
        """embeds (B, D) at positions (B,) of slots 0..B-1 → last hidden state (B, D)."""
        return self._backbone_step(embeds, positions, kv_len)

    def _backbone_step_eager(self, embeds: torch.Tensor, positions: torch.Tensor, kv_len: int) -> torch.Tensor:
        backend = self._step_backend(embeds.shape[0])
        h = self.model.backbone(embeds.unsqueeze(1), positions.unsqueeze(1), None, kv_len, backend)
        return h[:, 0]

    @property
    def prompts_in_step(self) -> bool:
        """Whether `backbone_step_with_prompts` can run: it needs the fused attention kernel and
        projections (a CUDA device with Triton, or Triton's interpreter)."""
        return self._rows_backend is not None and self.linear_max_batch > 0

    def backbone_step_with_prompts(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        prompt_positions: torch.Tensor,
        prompt_slots: torch.Tensor,
    ) -> torch.Tensor:
        """`backbone_step` of slots 0..B-1 (embeds (B, D) at positions (B,)) in one pass with prompt
        rows (tokens, mask (P, 33) at prompt_positions (P,) of prompt_slots (P,); position < 0:
        padding): the prompts' keys and values are written, and the step's rows attend, as a
        prefill then a step would, but the backbone's weights are read once for both. Every row's
        key/value is written before any row attends, so a sequence joining in this step attends
        over its prompt written in the same pass. Returns the step rows' last hidden state (B, D)."""
        if not self.prompts_in_step:
            raise RuntimeError("prompts in the step need the fused attention kernel and projections")
        m, b = self.model, embeds.shape[0]
        x = torch.cat([embeds, m.embed_rows(tokens[:, None], mask[:, None])[:, 0]])
        rows_positions = torch.cat([positions, prompt_positions])
        slots = torch.cat([torch.arange(b, device=embeds.device), prompt_slots])
        h = m.backbone(x[:, None], rows_positions[:, None], slots, m.max_seq_len, self._rows_backend)
        return h[:b, 0]

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
        counters = draw_counter(frame, codebook)
        return sample_top_k(logits, temperature, top_k, seeds, counters, self.noise_columns)

    def _sample_for_next(
        self,
        logits: torch.Tensor,
        codebook: int,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        seeds: torch.Tensor,
        frame: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Codebook `codebook`'s ids, and, where the fused sampler copies them, the next depth
        step's inputs (their rows of `depth_inputs`; else None: the next step gathers them)."""
        if self.fused and SAMPLER_COPIES_INPUTS and codebook + 1 < self.num_codebooks:
            table = self.depth_inputs[codebook * self.vocab : (codebook + 1) * self.vocab]  # the next codebook's
            return torch.ops.csm_serve.sample_top_k_embed(
                logits, temperature, top_k, seeds, frame, codebook, self.noise_columns, table
            )
        return self._sample(logits, codebook, temperature, top_k, seeds, frame), None

    def _next_inputs(self, prev: torch.Tensor, inputs: torch.Tensor | None, codebook: int) -> torch.Tensor:
        """Depth step `codebook`'s inputs (B, 1, dim): the rows the sampler copied, else gathered
        from codebook `codebook - 1`'s ids `prev`."""
        if inputs is None:
            inputs = self.depth_inputs[prev + (codebook - 1) * self.vocab]
        return inputs.unsqueeze(1)

    def _head_logits(self, out: torch.Tensor, codebook: int, backend: Backend) -> torch.Tensor:
        """Codebook `codebook`'s logits from the depth decoder's un-normed states out (B, dim): the
        final norm inside the fused head projection, over the sampled vocabulary only."""
        head = self.model.audio_head[codebook - 1].t()[: self.noise_columns.shape[0]]
        return backend.projections.norm_linear(out, self.model.decoder.norm, head)

    def _depth(
        self, x: torch.Tensor, positions: torch.Tensor, backend: Backend = EAGER, final_norm: bool = True
    ) -> torch.Tensor:
        """Depth decoder over projected inputs x (B, T, depth dim) at positions (B, T) (all rows)."""
        m = self.model
        return m.decoder(x, positions, None, m.cfg.decoder_seq_len, backend, final_norm)

    @staticmethod
    def _positions(b: int, t: int, start: int, device: torch.device) -> torch.Tensor:
        return (torch.arange(t, device=device) + start).expand(b, t)

    def _frame_start_eager(
        self,
        h: torch.Tensor,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        seeds: torch.Tensor,
        frame: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Codebook 0 from the backbone state h (B, D), then codebook 1 on a fresh depth cache; and
        the next step's inputs where the sampler copied them (`_sample_for_next`)."""
        m = self.model
        c0 = self._sample(m.codebook0_logits(h), 0, temperature, top_k, seeds, frame)
        x = torch.stack([m.projection(h), self.depth_inputs[c0]], dim=1)
        positions = self._positions(x.shape[0], 2, 0, x.device)
        rows = self._rows_backend
        if FUSED_FRAME_START and rows is not None and self.fused_linear_for(2 * x.shape[0]):
            # Both positions of each slot as prompt rows: written, then attended, in one pass.
            out = m.decoder(x, positions, None, m.cfg.decoder_seq_len, rows, final_norm=False)[:, -1]
            logits = self._head_logits(out, 1, rows)
        else:
            logits = torch.matmul(self._depth(x, positions)[:, -1], m.audio_head[0])
        c1, inputs = self._sample_for_next(logits, 1, temperature, top_k, seeds, frame)
        return c0, c1, inputs

    def _depth_step_eager(
        self,
        prev: torch.Tensor,
        inputs: torch.Tensor | None,
        codebook: int,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        seeds: torch.Tensor,
        frame: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed codebook `codebook - 1`'s ids `prev` (B,) (their input rows, where the sampler
        copied them) at depth position `codebook` (2..31) and sample codebook `codebook`; returns
        its ids and the next step's inputs (or None). Compiled with a symbolic `codebook`, so one
        graph serves all."""
        m = self.model
        x = self._next_inputs(prev, inputs, codebook)
        b = x.shape[0]
        if self.fused:
            # The depth position is a view of a constant table, and the final norm runs with the
            # codebook head (a transposed view of the (dim, vocab) head): one step in 22 launches
            # through the fused projections.
            backend = self._step_backend(b)
            positions = self.depth_positions[codebook : codebook + 1].expand(b, 1)
            out = self._depth(x, positions, backend, final_norm=False)[:, 0]
            logits = self._head_logits(out, codebook, backend)
        else:
            out = self._depth(x, self._positions(b, 1, codebook, x.device), self.one_token)[:, 0]
            logits = torch.matmul(out, m.audio_head[codebook - 1])
        return self._sample_for_next(logits, codebook, temperature, top_k, seeds, frame)

    def depth_frame(
        self,
        h: torch.Tensor,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        seeds: torch.Tensor,
        frame: torch.Tensor,
    ) -> torch.Tensor:
        """A whole frame from backbone states h (B, D): codes (B, 32)."""
        c0, c, inputs = self._frame_start(h, temperature, top_k, seeds, frame)
        if self.one_launch_frame(h.shape[0]) and inputs is not None:
            rest = self._depth_loop.run(inputs, temperature, top_k, seeds, frame)
            return torch.cat([c0[:, None], c[:, None], rest], dim=1)
        codes = [c0, c]
        for i in range(2, self.num_codebooks):
            c, inputs = self._depth_step(c, inputs, i, temperature, top_k, seeds, frame)
            codes.append(c)
        return torch.stack(codes, dim=1)
