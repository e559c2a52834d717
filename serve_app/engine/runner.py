"""Device side of the engine: per-slot state, prefill, the decode step and streaming audio decode.

All per-slot state lives in preallocated device tensors indexed by slot, so one decode step is a
fixed set of kernels for a given (batch bucket, key-window bucket): on CUDA it is captured once
per bucket as CUDA graphs (optionally over `torch.compile`d step functions) and replayed; on CPU
the very same functions run eagerly. The step itself advances positions and frame counters on the
device, so the host only writes a slot's state when a request joins or leaves.

A decode step for batch rows 0..B-1 (row = slot):
  hidden  = backbone(embeds, positions)                  backbone graph (B, key window)
  codes   = depth frame(hidden) with per-row seeds        depth graph (B)
  embeds  = embedding of codes (next step's input); history ring[slot, frame % R] = codes;
  positions, frames += 1 for live rows
With `prompts_in_step`, the step after an admission carries the joining prompts' rows in its backbone
pass (a graph per batch bucket and prompt row bucket) instead of a prefill launched before it.
Each step then copies its codes into a host buffer of its own (a small ring) and records that
buffer's event, so the host can queue the next step before reading this one's codes and waits for
this step alone. New frames are decoded to audio from the history ring by the (graphed) streaming
Mimi decoder, batched across slots, on a separate audio stream so decoding overlaps the next step.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from serve_app.engine.cuda_graphs import (
    CudaGraphs,
    GraphedMimiStreamDecoder,
    buckets_up_to,
    smallest_bucket,
    split_ring_decode,
)
from serve_app.engine.prompt_rows import (
    ARMING_COLUMNS,
    PREFILL_TOKEN_BUDGET,
    PREFILL_WIDTHS,
    PROMPT_ROW_BUCKETS,
    ROW_COLUMNS,
    PrefillGroup,
    arming_rows,
    flat_rows,
    padding_rows,
    prefill_groups,
    prefill_rows,
    prompt_row_count,
    unpack_rows,
)
from serve_app.engine.sequence import Sequence
from serve_app.model.csm import CsmModel
from serve_app.model.fast_step import FastStep

logger = logging.getLogger(__name__)

DEFAULT_KV_BUCKETS = (128, 256, 512, 1024, 2048)
STEP_OUTPUT_RING = 3
"""Host buffers for step codes: a step's codes must be fetched before this many more steps launch."""
STEP_STREAM_PRIORITY = -1
"""CUDA priority of the stream that prefills and steps (lower is higher; the audio stream has the
default, 0): when both streams have blocks ready, the SMs take the step's first and the audio
decode fills the gaps of its small kernels, so audio costs the step less than its own run time."""


@dataclass(frozen=True)
class StepOutput:
    """A launched step's codes for rows 0..rows-1, copied to host buffer `index % STEP_OUTPUT_RING`
    behind the step (`index`: steps launched before it)."""

    index: int
    rows: int


class DecodedAudio(NamedTuple):
    """A chunk decode of `frames` frames a stream, on its way to the host until fetched: `samples`
    (B, frames * frame samples + frames) float32, each stream's pcm then each frame's loudness for
    the silence guard. The loudness is reduced on the device so the loop thread reads n numbers a
    stream, not the samples: numpy passes over the samples release and retake the GIL, which under
    a busy event-loop thread costs far more than the arithmetic."""

    samples: torch.Tensor
    frames: int


def slot_bytes(model: CsmModel) -> int:
    """Device bytes one slot needs: backbone and depth KV caches (the audio decoder's state is small)."""
    dtype_bytes = model.codebook0_head.weight.element_size()
    total = 0
    for stack, positions in (
        (model.cfg.backbone, model.max_seq_len + 1),
        (model.cfg.decoder, model.cfg.decoder_seq_len + 1),
    ):
        total += stack.n_layers * 2 * stack.n_kv_heads * positions * stack.head_dim * dtype_bytes  # type: ignore[operator]
    return total


def slots_for_memory(model: CsmModel, cap: int, memory_fraction: float = 0.8) -> int:
    """KV slots that fit `memory_fraction` of the free device memory, at most `cap` (and at least 1)."""
    device = model.codebook0_head.weight.device
    if device.type != "cuda":
        return max(1, cap)
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(cap, int(free * memory_fraction) // slot_bytes(model)))


class ModelRunner:
    """Owns the model's caches and all device state; used by the engine loop thread only."""

    def __init__(
        self,
        model: CsmModel,
        mimi: Any,
        n_slots: int,
        *,
        vocab_limit: int | None = None,
        cuda_graphs: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
        linear_max_batch: int | None = None,
        kv_buckets: Seq[int] = DEFAULT_KV_BUCKETS,
        history: int = 32,
        audio_chunk_sizes: Seq[int] = (1, 8),
        prefill_attention: str = "sdpa",
        prompts_in_step: bool = False,
    ) -> None:
        """`prompts_in_step`: a joining request's prompt rows (up to `PROMPT_ROW_BUCKETS[-1]` in one
        admission) ride in the next decode step's backbone pass instead of a prefill of their own,
        where the fused kernels allow it (`FastStep.backbone_step_with_prompts`)."""
        self.model = model
        self.device = model.codebook0_head.weight.device
        self.dtype = model.codebook0_head.weight.dtype
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.n_slots = n_slots
        model.setup_caches(n_slots)
        self._linear_max_batch = linear_max_batch
        self._prefill_attention = prefill_attention
        self.fast = FastStep(
            model, vocab_limit, linear_max_batch=linear_max_batch, prefill_attention=prefill_attention
        )
        if compile:
            self.fast.compile(compile_mode)
        self.compiled = compile
        self.cuda_graphs = cuda_graphs
        self.batch_buckets = buckets_up_to(n_slots)
        limit = model.max_seq_len
        self.kv_buckets = tuple(sorted({min(b, limit) for b in kv_buckets} | {limit}))
        self.history_len = history
        n, dev = model.cfg.num_codebooks, self.device
        self.embeds = torch.zeros(n_slots, model.cfg.backbone.dim, dtype=self.dtype, device=dev)
        self.hidden = torch.zeros_like(self.embeds)
        self.positions = torch.full((n_slots,), -1, dtype=torch.long, device=dev)
        self._deactivated: list[int] = []  # slots stopped since the last flush_deactivated
        self.frame = torch.zeros(n_slots, dtype=torch.long, device=dev)
        self.seeds = torch.zeros(n_slots, dtype=torch.long, device=dev)
        self.temperature = torch.ones(n_slots, dtype=torch.float32, device=dev)
        self.top_k = torch.ones(n_slots, dtype=torch.long, device=dev)
        self.codes = torch.zeros(n_slots, n, dtype=torch.long, device=dev)
        self.history = torch.zeros(n_slots, history, n, dtype=torch.long, device=dev)
        self._rows = torch.arange(n_slots, device=dev)
        self.audio_chunk_sizes = tuple(sorted(set(audio_chunk_sizes)))
        if self.audio_chunk_sizes[-1] > history:
            raise ValueError(
                f"audio chunks of {self.audio_chunk_sizes[-1]} frames exceed the history ring ({history})"
            )
        self.decoder = GraphedMimiStreamDecoder(mimi, n_slots, use_graphs=cuda_graphs, ring=self.history)
        # Audio decodes (and decoder state resets) run on their own stream so they can overlap the
        # next decode step; a first chunk waits for the step that completed it.
        cuda = self.device.type == "cuda"
        self.audio_stream = torch.cuda.Stream(self.device) if cuda else None
        self.step_stream = torch.cuda.Stream(self.device, priority=STEP_STREAM_PRIORITY) if cuda else None
        # Per step: its codes land in the next pinned buffer of a ring and that buffer's event marks
        # the step done, so waiting for one step leaves the steps queued after it running.
        self._step_codes = [
            torch.zeros(n_slots, n, dtype=torch.long, pin_memory=cuda) for _ in range(STEP_OUTPUT_RING)
        ]
        self._step_events = [torch.cuda.Event() if cuda else None for _ in range(STEP_OUTPUT_RING)]
        self.steps_launched = 0
        self.frame_samples = self.decoder.frame_samples
        self._graphs: CudaGraphs | None = None
        self.prefill_widths = tuple(w for w in PREFILL_WIDTHS if w < limit) + (limit,)
        # Static inputs of the captured prefills and of the steps carrying prompts: packed prompt
        # rows (`prompt_rows`), by (batch, width) and by padded row count.
        self._prefill_inputs_of: dict[tuple[int, int], torch.Tensor] = {}
        self._wants_prompts_in_step = prompts_in_step
        self._prompt_rows_of: dict[int, torch.Tensor] = {}
        self._pending_prompts: int | None = None  # padded prompt rows staged for the next step
        self._pending_slots: set[int] = set()
        self.compile_error: str | None = None
        if cuda_graphs:
            self._capture_or_fall_back(vocab_limit)
            self.decoder.warmup(self.audio_chunk_sizes)

    def _capture_or_fall_back(self, vocab_limit: int | None) -> None:
        """Capture the step; if the compiler or the Triton kernel fails, fall back to eager kernels,
        then to the unfused attention, rather than take the service down."""
        attempts = dict.fromkeys([(self.compiled, self.fast.fused), (False, self.fast.fused), (False, False)])
        error: Exception | None = None
        for compiled, fused in attempts:
            if (compiled, fused) != (self.compiled, self.fast.fused):
                limit = self._linear_max_batch if fused else 0
                self.fast = FastStep(
                    self.model,
                    vocab_limit,
                    fused_attention=fused,
                    linear_max_batch=limit,
                    prefill_attention=self._prefill_attention,
                )
                self.compiled = False
                self._graphs = None
                self._prefill_inputs_of.clear()
                self._prompt_rows_of.clear()
                torch.cuda.synchronize(self.device)
            try:
                self.capture()
                return
            except Exception as exc:
                logger.exception("capturing the decode step failed (compiled=%s, fused=%s)", compiled, fused)
                self.compile_error = f"{type(exc).__name__}: {exc}"[:500]
                error = exc
        raise error  # type: ignore[misc]

    # ---- buckets ------------------------------------------------------------------------------
    def batch_bucket(self, rows: int) -> int:
        return smallest_bucket(self.batch_buckets, rows)

    def kv_bucket(self, positions: int) -> int:
        """Smallest key window holding positions 0..positions-1."""
        if positions > self.kv_buckets[-1]:
            raise ValueError(f"position {positions - 1} is beyond the cache ({self.kv_buckets[-1]})")
        return smallest_bucket(self.kv_buckets, positions)

    # ---- host -> device -----------------------------------------------------------------------
    def _pinned(self, x: torch.Tensor) -> torch.Tensor:
        """`x` staged for a copy that does not wait for the device (a pageable one would sync)."""
        return x.pin_memory() if self.device.type == "cuda" else x

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Copy without waiting for the device: pinned staging, so queued steps keep running."""
        return self._pinned(x).to(self.device, non_blocking=True)

    def _stage(self, static: torch.Tensor, rows: np.ndarray) -> None:
        """Copy packed host rows into a static device input, pinned and queued."""
        static.copy_(self._pinned(torch.from_numpy(rows)), non_blocking=True)

    # ---- join / leave -------------------------------------------------------------------------
    @torch.inference_mode()
    def start(self, seqs: Seq[Sequence]) -> None:
        """Prefill joining sequences (every prompt row but the last, batched, right-padded) and arm
        their slots: the last prompt row is the first decode step's input."""
        if not seqs:
            return
        self.flush_deactivated()  # a slot stopped this iteration may be the one joining now
        with self._on_step_stream():
            self._start(seqs)

    def _start(self, seqs: Seq[Sequence]) -> None:
        m = self.model
        armed = self._to_device(arming_rows(seqs))  # every per-slot input in one copy
        slots = armed[:, 0]
        body = [s for s in seqs if s.prompt_len > 1]
        prompt_rows = prompt_row_count(body)
        in_step = self.prompts_in_step and self._pending_prompts is None
        if body and in_step and prompt_rows <= PROMPT_ROW_BUCKETS[-1]:
            self._stage_prompt_rows(body, prompt_rows)
        elif body and self._prefill_inputs_of:
            for group in prefill_groups(body, self.batch_buckets, self.prefill_widths, PREFILL_TOKEN_BUDGET):
                self._replay_prefill(group)
        elif body:
            # Widths in multiples of 16: fewer shapes, and no width-1 specialisation of the compiled prefill.
            width = -(-max(s.prompt_len - 1 for s in body) // 16) * 16
            rows = self._to_device(torch.from_numpy(prefill_rows(body, len(body), width)))
            self._prefill_packed(rows, min(width, m.max_seq_len))
        width = (armed.shape[1] - ARMING_COLUMNS) // 2
        tokens = armed[:, None, ARMING_COLUMNS : ARMING_COLUMNS + width]
        mask = armed[:, None, ARMING_COLUMNS + width :]
        self.embeds[slots] = m.embed_rows(tokens, mask)[:, 0]
        self.positions[slots] = armed[:, 1]
        self.frame.index_fill_(0, slots, 0)
        self.seeds[slots] = armed[:, 2]
        self.temperature[slots] = armed[:, 3].to(torch.int32).view(torch.float32)
        self.top_k[slots] = armed[:, 4]
        with self._on_audio_stream():
            self.decoder.reset(*[s.slot for s in seqs])  # type: ignore[misc]

    def _prefill_packed(self, rows: torch.Tensor, kv_len: int) -> None:
        """Prefill packed prompt rows (batch, width, ROW_COLUMNS) on the device; a row's slot is
        its first column's."""
        tokens, mask, positions, slots = unpack_rows(rows)
        # Contiguous, as the warm-up's: the compiled prefill is specialised on its inputs' strides.
        self.fast.prefill(tokens, mask, positions, slots[:, 0].contiguous(), kv_len)

    @property
    def prompts_in_step(self) -> bool:
        """Whether joining prompts ride in the next step's backbone pass (asked, and supported)."""
        return self._wants_prompts_in_step and self.fast.prompts_in_step

    def _stage_prompt_rows(self, seqs: Seq[Sequence], rows: int) -> None:
        """Every prompt row but the last of each of `seqs`, packed one after another and padded to a
        row bucket, into that bucket's static input (pinned, queued): the next `step` reads them."""
        bucket = smallest_bucket(PROMPT_ROW_BUCKETS, rows)
        static = self._prompt_rows_of.get(bucket)
        if static is None:  # no graphs: a buffer of its own, written whole by the copy below
            static = self._prompt_rows_of.setdefault(
                bucket, torch.empty(bucket, ROW_COLUMNS, dtype=torch.long, device=self.device)
            )
        self._stage(static, flat_rows(seqs, bucket))
        self._pending_prompts = bucket
        self._pending_slots = {s.slot for s in seqs}  # type: ignore[misc]

    def _replay_prefill(self, group: PrefillGroup) -> None:
        """Copy a group's packed prompts into its captured prefill's input (pinned, queued, one copy)
        and replay it: one launch whatever the prompt count, where an eager prefill launches hundreds
        of kernels."""
        key = (group.batch, group.width)
        rows = prefill_rows(group.seqs, group.batch, group.width)
        self._stage(self._prefill_inputs_of[key], rows)
        self._graphs.replay(("prefill", *key))  # type: ignore[union-attr]

    def _capture_prefills(self, graphs: CudaGraphs) -> None:
        """One graph per (batch bucket, width) within the token budget, in the step's memory pool."""
        for batch in reversed(self.batch_buckets):
            for width in reversed(self.prefill_widths):
                if batch * width > PREFILL_TOKEN_BUDGET:
                    continue
                static = torch.from_numpy(padding_rows(batch, width)).to(self.device)

                def prefill(x: torch.Tensor = static, w: int = width) -> None:
                    self._prefill_packed(x, w)

                with graphs.warming_up():  # padding only: the scratch column is written
                    prefill()
                graphs.capture(("prefill", batch, width), prefill)
                self._prefill_inputs_of[(batch, width)] = static

    def _capture_steps_with_prompts(self, graphs: CudaGraphs) -> None:
        """One backbone graph per (batch bucket, prompt row bucket), reading the bucket's static
        prompt rows (padding while captured: nothing is written)."""
        for prompt_rows in reversed(PROMPT_ROW_BUCKETS):
            self._prompt_rows_of[prompt_rows] = torch.from_numpy(padding_rows(prompt_rows)).to(self.device)
            for batch in reversed(self.batch_buckets):

                def step(b: int = batch, p: int = prompt_rows) -> None:
                    self._backbone_with_prompts(b, p)

                with graphs.warming_up():
                    step()
                graphs.capture(("step_prompts", batch, prompt_rows), step)

    def deactivate(self, slot: int) -> None:
        """Stop stepping `slot` from the next step on (its audio decoder state stays for the last
        chunk). Noted here and written by `flush_deactivated`, which every step and prefill launch
        calls first: one indexed fill for all the slots an iteration stops, where a fill per slot
        cost the loop thread a launch each."""
        self._deactivated.append(slot)

    def flush_deactivated(self) -> None:
        """Queue `positions[slots] = -1` for the slots deactivated since the last flush, behind the
        steps in flight (an indexed fill from a pinned index: no host sync)."""
        if not self._deactivated:
            return
        with self._on_step_stream():  # the index is copied on the stream that reads it
            index = self._to_device(torch.tensor(self._deactivated, dtype=torch.long))
            self.positions.index_fill_(0, index, -1)
        self._deactivated.clear()

    def release(self, slot: int) -> None:
        """Stop stepping `slot` and free its audio decoder state (and drop prompt rows staged for
        the next step, if they were its: their admission failed or was abandoned)."""
        if slot in self._pending_slots:
            self._pending_prompts, self._pending_slots = None, set()
        self.deactivate(slot)
        self.decoder.free(slot)

    def slot_positions(self) -> list[int]:
        """Every slot's next position (-1: not stepped), read behind the queued steps (waits)."""
        self.flush_deactivated()
        with self._on_step_stream():
            return self.positions.tolist()

    def _on_audio_stream(self) -> Any:
        return _on(self.audio_stream)

    def _on_step_stream(self) -> Any:
        return _on(self.step_stream)

    # ---- decode step --------------------------------------------------------------------------
    def _backbone(self, rows: int, kv_len: int) -> None:
        h = self.fast.backbone_step(self.embeds[:rows], self.positions[:rows], kv_len)
        self.hidden[:rows].copy_(h)

    def _backbone_with_prompts(self, rows: int, prompt_rows: int) -> None:
        tokens, mask, positions, slots = unpack_rows(self._prompt_rows_of[prompt_rows])
        h = self.fast.backbone_step_with_prompts(
            self.embeds[:rows], self.positions[:rows], tokens, mask, positions, slots
        )
        self.hidden[:rows].copy_(h)

    def _depth(self, rows: int) -> None:
        frame = self.frame[:rows]
        codes = self.fast.depth_frame(
            self.hidden[:rows],
            self.temperature[:rows],
            self.top_k[:rows],
            self.seeds[:rows],
            frame,
        )
        self.codes[:rows].copy_(codes)
        self.embeds[:rows].copy_(self.model.embed_frame(codes))
        self.history[self._rows[:rows], frame % self.history_len] = codes
        live = (self.positions[:rows] >= 0).long()
        self.positions[:rows] += live
        self.frame[:rows] += live

    @torch.inference_mode()
    def step(self, rows: int, positions: int) -> StepOutput:
        """Launch one decode step for slots 0..rows-1 whose highest next position is < `positions`.

        Results land in `codes` (until the next step) and the history ring; the returned handle
        fetches this step's codes later (`fetch`) without waiting for steps launched after it."""
        self.flush_deactivated()
        with self._on_step_stream():
            return self._step(rows, positions)

    def _step(self, rows: int, positions: int) -> StepOutput:
        batch, kv_len = self.batch_bucket(rows), self.kv_bucket(positions)
        prompts, self._pending_prompts, self._pending_slots = self._pending_prompts, None, set()
        if self._graphs is not None:
            backbone = ("backbone", batch, kv_len) if prompts is None else ("step_prompts", batch, prompts)
            self._graphs.replay(backbone)
            self._graphs.replay(("depth", batch))
        else:
            if prompts is None:
                self._backbone(batch, kv_len)
            else:
                self._backbone_with_prompts(batch, prompts)
            self._depth(batch)
        out = StepOutput(self.steps_launched, rows)
        ring = out.index % STEP_OUTPUT_RING
        self._step_codes[ring][:rows].copy_(self.codes[:rows], non_blocking=True)
        event = self._step_events[ring]
        if event is not None:
            event.record()
        self.steps_launched += 1
        return out

    def _ring_index(self, out: StepOutput) -> int:
        """`out`'s host buffer and event, checked not to be reused by a later step yet."""
        if self.steps_launched - out.index > STEP_OUTPUT_RING:
            raise RuntimeError(
                f"step {out.index}'s output was overwritten ({self.steps_launched} steps launched): "
                f"fetch a step before {STEP_OUTPUT_RING} more are launched"
            )
        return out.index % STEP_OUTPUT_RING

    def _warm_prefill(self) -> None:
        """Compile the prefill for one and for several prompts now, not when the first ones arrive
        (padding rows only: nothing but the scratch column is written)."""
        width = 16
        for batch in sorted({1, min(2, self.n_slots)}):
            shape = (batch, width, self.model.cfg.num_codebooks + 1)
            tokens = torch.zeros(shape, dtype=torch.long, device=self.device)
            positions = torch.full((batch, width), -1, dtype=torch.long, device=self.device)
            slots = torch.arange(batch, device=self.device)
            self.fast.prefill(tokens, tokens.bool(), positions, slots, width)

    @torch.inference_mode()
    def capture(self) -> None:
        """Warm up (and compile) every bucket, then capture one graph per (batch, key window) for the
        backbone, one per batch for the depth frame, one per (batch, width) for the prefill and, with
        `prompts_in_step`, one per (batch, prompt rows) for a backbone pass carrying prompts, all in
        one memory pool (they replay one after another on one stream)."""
        if self.positions.ge(0).any():
            raise RuntimeError("capture CUDA graphs before any slot is live")
        graphs = CudaGraphs(self.device, shared_pool=True)
        with graphs.warming_up():
            self._warm_prefill()
            for batch in self.batch_buckets:
                for kv_len in self.kv_buckets:
                    self._backbone(batch, kv_len)
                self._depth(batch)
                self._depth(batch)
        torch.cuda.synchronize(self.device)
        for batch in reversed(self.batch_buckets):
            for kv_len in self.kv_buckets:
                graphs.capture(("backbone", batch, kv_len), lambda b=batch, k=kv_len: self._backbone(b, k))
            graphs.capture(("depth", batch), lambda b=batch: self._depth(b))
        self._capture_prefills(graphs)
        if self.prompts_in_step:
            self._capture_steps_with_prompts(graphs)
        torch.cuda.synchronize(self.device)
        self._graphs = graphs
        logger.info(
            "captured %d CUDA graphs (batches %s, key windows %s, %d prefills)",
            len(graphs),
            self.batch_buckets,
            self.kv_buckets,
            len(self._prefill_inputs_of),
        )

    # ---- audio --------------------------------------------------------------------------------
    def final_chunk_size(self, frames: int) -> int:
        """Frames to decode for a stream's last `frames` frames: the smallest warmed chunk size that
        holds them (its graphs exist; the extra frames' audio is dropped and the stream ends anyway)."""
        return next((n for n in self.audio_chunk_sizes if n >= frames), frames)

    def one_launch_frame(self, rows: int) -> bool:
        """Whether a step of `rows` rows runs its frame's depth steps as one persistent launch."""
        return self.fast.one_launch_frame(self.batch_bucket(rows))

    def step_after_audio(self) -> None:
        """Make the next step wait, on the device, for the audio decodes queued so far."""
        if self.audio_stream is not None and self.step_stream is not None:
            self.step_stream.wait_stream(self.audio_stream)

    @torch.inference_mode()
    def decode_audio(
        self, slots: Seq[int], first_frames: Seq[int], n: int, after: StepOutput | None = None
    ) -> DecodedAudio:
        """Decode frames first..first+n-1 of each slot from the history ring, on the audio stream.
        `after`: a step not fetched yet that computed some of these frames (the decode waits for it
        on the device); without it the frames are older and the decode may run alongside the steps
        in flight."""
        with self._on_audio_stream():
            if after is not None and self.audio_stream is not None:
                self.audio_stream.wait_event(self._step_events[self._ring_index(after)])
            return DecodedAudio(self.decoder.decode_ring(slots, first_frames, n), n)

    def fetch(
        self, step: StepOutput | None, audio: Seq[DecodedAudio]
    ) -> tuple[np.ndarray | None, list[tuple[np.ndarray, np.ndarray]]]:
        """Bring one step's codes (rows, 32) and decoded audio (each decode's pcm (B, n * frame
        samples) and frame loudness (B, n)) to the host, waiting for that step alone (steps
        launched after it keep running) and for the audio stream."""
        if audio:
            if self.audio_stream is not None:
                self.audio_stream.synchronize()
            self.decoder.decodes_done()  # the stream every decode is queued on has caught up
        pcm = [split_ring_decode(a.samples.numpy(), a.frames) for a in audio]
        if step is None:
            return None, pcm
        ring = self._ring_index(step)
        event = self._step_events[ring]
        if event is not None:
            event.synchronize()
        codes = self._step_codes[ring][: step.rows].numpy().copy()  # a later step reuses the buffer
        return codes, pcm

    def info(self) -> dict[str, Any]:
        return {
            "slots": self.n_slots,
            "batch_buckets": list(self.batch_buckets),
            "kv_buckets": list(self.kv_buckets),
            "cuda_graphs": self.cuda_graphs,
            "compiled": self.compiled,
            "fused_attention": self.fast.fused,
            "fused_linear_max_batch": self.fast.linear_max_batch,
            "fused_prefill_max_rows": self.fast.prefill_fused_rows,
            "prefill_attention": self.fast.prefill_attention,
            "prompts_in_step": self.prompts_in_step,
            **({"compile_error": self.compile_error} if self.compile_error else {}),
        }


def _on(stream: torch.cuda.Stream | None) -> Any:
    """Work queued inside runs on `stream` (no stream: the device's current one, e.g. on a CPU)."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
