"""The speech engine: continuous batching over KV slots, streamed audio, async and sync front ends.

    engine = Engine.from_preset("tiny-random")           # or "csm-1b" on a GPU
    audio = await engine.generate(GenerationRequest(text="Hello there."))
    async for chunk in engine.stream(request): ...       # closing the iterator cancels the request
    audio = engine.generate_sync(request)                # from plain threads / scripts

The model runs on one loop thread (`EngineLoop`): requests join the running batch at frame
boundaries and leave when they end, each with its own seed, so a request's audio does not depend on
what else is running. Results cross to asyncio through `loop.call_soon_threadsafe`, so no event loop
ever waits on the model; prompt building (and encoding context audio) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from serve_app.engine.config import EngineConfig
from serve_app.engine.generator import resolve_context
from serve_app.engine.loop import EngineLoop, SilenceGuard, StepObserver
from serve_app.engine.mailbox import LoopMailbox
from serve_app.engine.prompt import build_prompt
from serve_app.engine.runner import ModelRunner, slots_for_memory
from serve_app.engine.sampling import fresh_seed
from serve_app.engine.scheduler import Scheduler
from serve_app.engine.sequence import ChunkPolicy, Sequence
from serve_app.engine.types import (
    FRAME_MS,
    FRAME_SAMPLES,
    MAX_POSITIONS,
    NUM_CODEBOOKS,
    SAMPLE_RATE,
    Audio,
    AudioChunk,
    FinishReason,
    GenerationRequest,
)
from serve_app.model.config import CsmModelConfig
from serve_app.model.kernels.ahead import (
    AheadReport,
    CompileAhead,
    geometry_key,
    start_for_preset,
    start_shipped,
)
from serve_app.model.loading import LoadedModel, load_model, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

Item = AudioChunk | BaseException

__all__ = ["Engine", "EngineConfig", "freeze_built_objects", "lower_switch_interval"]


LOOP_SWITCH_INTERVAL_S = 0.0005
"""The GIL switch interval for a process that hosts an engine (`lower_switch_interval`)."""

SWITCH_INTERVAL_ENV = "CSM_GIL_SWITCH_INTERVAL_S"
"""Overrides `LOOP_SWITCH_INTERVAL_S` in the processes that host an engine (seconds, > 0)."""


INLINE_PROMPT_CHARS = 200
"""A request whose text is up to this long and whose context needs no audio encoded (codes only, up
to `INLINE_PROMPT_CONTEXT_FRAMES` frames) has its prompt built on the event loop (tens of
microseconds); others in a worker thread. Under load the thread pool's hop there and back waits for
the GIL behind the engine's loop thread and the event loop's own work, on the way to first audio."""

INLINE_PROMPT_CONTEXT_FRAMES = 1024
"""Context frames (about 80 s of audio) up to which a prompt is still built on the event loop."""


def builds_inline(request: GenerationRequest) -> bool:
    """Whether `request`'s prompt is cheap enough to build on the event loop (`INLINE_PROMPT_CHARS`)."""
    if len(request.text) > INLINE_PROMPT_CHARS or any(seg.codes is None for seg in request.context):
        return False
    return sum(len(seg.codes) for seg in request.context) <= INLINE_PROMPT_CONTEXT_FRAMES  # type: ignore[arg-type]


def lower_switch_interval(seconds: float | None = None) -> None:
    """Lower CPython's GIL switch interval (5 ms by default) to `seconds` (default: $CSM_GIL_SWITCH_INTERVAL_S,
    else `LOOP_SWITCH_INTERVAL_S`), for the whole process.

    The engine's loop thread shares the GIL with the event-loop threads streaming chunks out; a thread
    that wants the GIL may wait up to the switch interval before the holder must drop it, which stalls
    the device once per frame under load (the engine benchmark's `--switch-ab` measures it). Every
    torch call releases the GIL and takes it back, so behind Ray each call of the loop thread may wait
    for the replica's event-loop thread. A process-wide setting, so it is made where the process is
    owned: the model replica and `csm-serve serve --preset`, not by the engine."""
    if seconds is None:
        raw = os.environ.get(SWITCH_INTERVAL_ENV)
        try:
            seconds = LOOP_SWITCH_INTERVAL_S if raw is None else float(raw)
        except ValueError:
            raise ValueError(f"{SWITCH_INTERVAL_ENV} must be a number of seconds, got {raw!r}") from None
        if not 0 < seconds <= 1:
            raise ValueError(f"{SWITCH_INTERVAL_ENV} must lie in (0, 1] seconds, got {raw!r}")
    if seconds < sys.getswitchinterval():
        sys.setswitchinterval(seconds)


def freeze_built_objects() -> None:
    """Collect once, then hide every object alive now from later collections (`gc.freeze`).

    A full collection walks every object the collector tracks while every thread of the process
    waits, the engine's loop thread included; over what building an engine leaves (modules, the
    model, captured graphs, compiled code) that is a stall of some 200 ms in every stream
    (`benchmarks/bench_gc_pause.py`). Called where the process is owned, once its engine is built:
    the engine's child process, `csm-serve serve --preset`, the engine benchmark. Ray Serve does the
    same for a replica's own process after its constructor. Frozen objects are still freed when
    their last reference goes; only cycles among them are never collected."""
    gc.collect()
    gc.freeze()


class Engine:
    def __init__(
        self,
        loaded: LoadedModel,
        config: EngineConfig | None = None,
        on_step: StepObserver | None = None,
        *,
        kernels_ahead: CompileAhead | None = None,
        **options: Any,
    ) -> None:
        """`on_step` hears each change of batch size and queue depth (from the loop thread).
        `kernels_ahead`: a compile-ahead started before the model loaded (`start_for_preset`); else
        one starts here."""
        t0 = time.perf_counter()
        self.loaded = loaded
        self.config = config = EngineConfig(**{**asdict(config or EngineConfig()), **options})
        model = loaded.model
        if not bool(torch.isfinite(model.codebook0_head.weight).all()):
            raise RuntimeError("model weights are not finite")
        cuda = model.codebook0_head.weight.device.type == "cuda"
        compiling = self._kernels_ahead_for(model.cfg, kernels_ahead) if cuda else kernels_ahead
        cap = config.max_batch_size or (128 if cuda else 8)
        n_slots = slots_for_memory(model, cap, config.memory_fraction)
        chunks = ChunkPolicy(
            config.first_chunk_frames, config.chunk_frames, config.chunk_ramp, config.chunk_align
        )
        # Before capture's first launch, which would compile its kernel itself.
        t1 = time.perf_counter()
        self.kernels_ahead: AheadReport | None = compiling.wait() if compiling is not None else None
        self.startup: dict[str, float] = {"kernels_ahead_wait_s": round(time.perf_counter() - t1, 2)}
        t1 = time.perf_counter()
        runner = ModelRunner(
            model,
            self._audio_decoder_model(cuda),
            n_slots,
            vocab_limit=model.cfg.codec_codebook_size,
            cuda_graphs=cuda if config.cuda_graphs is None else config.cuda_graphs,
            compile=cuda if config.compile is None else config.compile,
            linear_max_batch=config.fused_linear_max_batch,
            prefill_attention=config.prefill_attention,
            prompts_in_step=config.prefill_in_step,
            history=max(32, 2 * chunks.largest + 2),
            audio_chunk_sizes=chunks.sizes,
        )
        max_waiting = 2 * n_slots if config.max_waiting is None else config.max_waiting
        self.loop = EngineLoop(
            runner,
            Scheduler(n_slots, max_waiting, config.max_prefill_rows),
            chunks,
            SilenceGuard(config.silence_rms, config.silence_seconds),
            model.cfg.codebook_eos_id,
            on_step,
        )
        self._encode_lock = threading.Lock()
        self._mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopMailbox] = (
            weakref.WeakKeyDictionary()
        )
        self._closed = False
        self.loop.start()
        self.startup["capture_s"] = round(time.perf_counter() - t1, 2)
        self.startup["engine_s"] = round(time.perf_counter() - t0, 2)
        logger.info("engine started: %s", self.startup)

    @staticmethod
    def _kernels_ahead_for(cfg: CsmModelConfig, started: CompileAhead | None) -> CompileAhead | None:
        """The compile-ahead for the loaded model: `started` if it compiles for its geometry, else
        one started now (a `started` for another geometry is joined first: it would compete)."""
        key = geometry_key(cfg)
        if started is not None and started.model_key == key:
            return started
        if started is not None:
            started.wait()
        return start_shipped(key)

    def _audio_decoder_model(self, cuda: bool) -> Any:
        """The Mimi weights the stream decoder runs (a copy in `audio_dtype` if that differs from
        the codec's, which keeps encoding context audio in its own precision)."""
        mimi = self.loaded.codec.model
        dtype = resolve_dtype(
            self.config.audio_dtype or ("bfloat16" if cuda else "float32"), torch.device("cpu")
        )
        if next(mimi.parameters()).dtype == dtype:
            return mimi
        return copy.deepcopy(mimi).to(dtype)

    @classmethod
    def from_preset(
        cls,
        preset: str = "tiny-random",
        *,
        device: str | None = None,
        on_step: StepObserver | None = None,
        kernels_ahead: CompileAhead | None = None,
        **kwargs: Any,
    ) -> Engine:
        """Load `preset` (name, preset file or checkpoint dir; see `load_model`) and serve it.

        Keywords naming `EngineConfig` fields configure the engine; the rest go to `load_model`. With
        `compile_ahead_early` on a GPU, the kernels' compile-ahead starts before the load (unless
        `kernels_ahead` was started earlier still), so it runs while the weights load."""
        config, load_kwargs = EngineConfig.split(kwargs)
        if kernels_ahead is None and config.compile_ahead_early and resolve_device(device).type == "cuda":
            kernels_ahead = start_for_preset(preset)
        t0 = time.perf_counter()
        try:
            loaded = load_model(preset, device=device, **load_kwargs)
        except BaseException:
            if kernels_ahead is not None:
                kernels_ahead.cancel()  # else the process's exit would wait for the whole list
            raise
        load_s = round(time.perf_counter() - t0, 2)
        engine = cls(loaded, config, on_step, kernels_ahead=kernels_ahead)
        engine.startup["load_s"] = load_s
        return engine

    # ---- requests ---------------------------------------------------------------------------------
    def _sequence(self, request: GenerationRequest, sink: Callable[[Item], None]) -> Sequence:
        """Validate and build the prompt (encoding context audio once); off the event loop unless
        `builds_inline`."""
        if self._closed:
            raise RuntimeError("engine is closed")
        if not request.text.strip():
            raise ValueError("text must not be empty")
        model = self.loaded.model
        if any(seg.codes is None for seg in request.context):
            with self._encode_lock:
                context = resolve_context(self.loaded.codec, request.context)
        else:
            context = list(request.context)
        prompt = build_prompt(
            self.loaded.tokenizer,
            request.text,
            request.speaker,
            context,
            request.max_frames,
            model.max_seq_len,
        )
        seed = request.sampling.seed if request.sampling.seed is not None else fresh_seed()
        max_frames = min(request.max_frames, model.max_seq_len - len(prompt) + 1)
        return Sequence(request, prompt.tokens, prompt.mask, seed, sink, max_frames, prompt.dropped_turns)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[AudioChunk]:
        """Yield chunks as frames are generated; leaving early (aclose, cancellation) stops the request
        at the next frame and frees its slot. Raises `EngineOverloadedError` when the queue is full."""
        loop = asyncio.get_running_loop()
        mailbox = self._mailboxes.get(loop) or self._mailboxes.setdefault(loop, LoopMailbox(loop))
        began, entered = time.perf_counter(), time.time()
        items: asyncio.Queue[Item] = asyncio.Queue()

        def sink(item: Item) -> None:  # engine thread → this event loop, one wakeup per burst
            try:
                mailbox.post(items, item)
            except RuntimeError:  # the event loop is gone: nobody listens any more
                seq.cancel()

        if builds_inline(request):
            seq = self._sequence(request, sink)
        else:
            seq = await asyncio.to_thread(self._sequence, request, sink)
        self.loop.submit(seq)
        queued = time.perf_counter()
        try:
            first = True
            while True:
                item = await items.get()
                if isinstance(item, BaseException):
                    raise item
                if first:
                    item.first_audio_ms, first = (time.perf_counter() - began) * 1000, False
                    item.queued_ms = (queued - began) * 1000
                    if seq.admitted_at is not None:
                        item.admitted_ms = (seq.admitted_at - began) * 1000
                    item.trace = (("engine", entered, time.time()),)
                yield item
                if item.is_last:
                    return
        finally:
            if not seq.finished:
                self.loop.cancel(seq)

    async def generate(self, request: GenerationRequest) -> Audio:
        return _join([chunk async for chunk in self.stream(request)])

    def stream_sync(self, request: GenerationRequest) -> Iterator[AudioChunk]:
        """`stream` for plain threads: a blocking iterator; closing it cancels the request."""
        items: queue.SimpleQueue[Item] = queue.SimpleQueue()
        seq = self._sequence(request, items.put)
        self.loop.submit(seq)
        try:
            while True:
                item = items.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.is_last:
                    return
        finally:
            if not seq.finished:
                self.loop.cancel(seq)

    def generate_sync(self, request: GenerationRequest) -> Audio:
        return _join(list(self.stream_sync(request)))

    async def encode_audio(self, pcm: np.ndarray) -> np.ndarray:
        def encode() -> np.ndarray:
            with self._encode_lock:
                return self.loaded.codec.encode(pcm).cpu().numpy().astype(np.int64)

        if self._closed:
            raise RuntimeError("engine is closed")
        return await asyncio.to_thread(encode)

    # ---- operations ---------------------------------------------------------------------------
    async def info(self) -> dict[str, Any]:
        runner, cfg = self.loop.runner, self.config
        return {
            **self.loaded.info,
            "engine": "continuous-batching",
            # Where this engine's start went (seconds; imports_s and process_s where it runs in a
            # process of its own), and what its kernels' compile-ahead did.
            "startup": {
                **self.startup,
                "kernels_ahead": asdict(self.kernels_ahead) if self.kernels_ahead is not None else None,
            },
            **runner.info(),
            **self.loop.stats(),
            "chunk_frames": {
                "first": cfg.first_chunk_frames,
                "later": cfg.chunk_frames,
                "ramp": cfg.chunk_ramp,
                "align": cfg.chunk_align,
            },
            "silence_guard": {"rms": cfg.silence_rms, "seconds": cfg.silence_seconds},
            "audio_dtype": str(self.loop.runner.decoder.decoder.mimi.dtype).removeprefix("torch."),
            "max_waiting": self.loop.scheduler.max_waiting,
            "max_positions": min(MAX_POSITIONS, self.loaded.model.max_seq_len),
            "max_audio_length_ms": (self.loaded.model.max_seq_len - 1) * FRAME_MS,
            "frame_ms": FRAME_MS,
            "frame_samples": FRAME_SAMPLES,
            "num_codebooks": NUM_CODEBOOKS,
            "sample_rate": SAMPLE_RATE,
        }

    async def check_health(self) -> None:
        """Raise unless the engine is open and its loop thread alive and not stuck in an iteration.

        No device work here: this runs on the event loop (Ray's periodic health check), and a device
        sync from that thread would wait behind every kernel queued by the loop thread. The weights
        are checked once, when the engine starts."""
        if self._closed:
            raise RuntimeError("engine is closed")
        if not self.loop.alive:
            raise RuntimeError(f"engine loop is not running: {self.loop.error!r}")
        limit = self.config.stuck_iteration_s
        if limit > 0 and (stuck := self.loop.iteration_s()) > limit:
            raise RuntimeError(f"engine loop stuck in one iteration for {stuck:.0f} s")

    def close(self) -> None:
        """Stop the loop thread; running and waiting requests end as cancelled."""
        if self._closed:
            return
        self._closed = True
        self.loop.stop()
        self.loop.abort(RuntimeError("engine closed"))


def _join(chunks: list[AudioChunk]) -> Audio:
    if not chunks:
        raise RuntimeError("stream ended without a final chunk")
    last = chunks[-1]
    return Audio(
        pcm=np.concatenate([c.pcm for c in chunks]).astype(np.float32, copy=False),
        codes=np.concatenate([c.codes for c in chunks]).astype(np.int64, copy=False),
        finish_reason=last.finish_reason or FinishReason.LENGTH,
        dropped_context_turns=last.dropped_context_turns,
    )
