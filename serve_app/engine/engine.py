"""First `SpeechEngine`: the reference generator behind a lock, off the event loop.

One utterance runs at a time in a worker thread (`asyncio.to_thread`); the lock is a threading
lock taken inside that thread, so it works from any event loop and never blocks one. `stream`
yields the whole utterance as a single chunk. The continuous-batching engine replaces this.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Callable, Optional, TypeVar

import numpy as np
import torch

from serve_app.engine.generator import Generator
from serve_app.engine.types import (
    FRAME_MS, FRAME_SAMPLES, MAX_POSITIONS, NUM_CODEBOOKS, SAMPLE_RATE, Audio, AudioChunk, GenerationRequest,
)
from serve_app.model.loading import LoadedModel, load_model

T = TypeVar("T")


class Engine:
    def __init__(self, loaded: LoadedModel, *, max_batch_size: int = 1) -> None:
        self.loaded = loaded
        self.generator = Generator(loaded.model, loaded.tokenizer, loaded.codec, max_batch_size=max_batch_size)
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_preset(cls, preset: str = "tiny-random", *, device: Optional[str] = None,
                    max_batch_size: int = 1, **load_kwargs: Any) -> "Engine":
        """Load `preset` (name, preset file or checkpoint dir; see `load_model`) and wrap it."""
        return cls(load_model(preset, device=device, **load_kwargs), max_batch_size=max_batch_size)

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError("engine is closed")

        def locked() -> T:
            with self._lock:
                return fn()

        return await asyncio.to_thread(locked)

    async def generate(self, request: GenerationRequest) -> Audio:
        if not request.text.strip():
            raise ValueError("text must not be empty")
        return (await self._run(lambda: self.generator.generate([request])))[0]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[AudioChunk]:
        audio = await self.generate(request)
        yield AudioChunk(pcm=audio.pcm, codes=audio.codes, frames=int(audio.codes.shape[0]), is_last=True,
                         finish_reason=audio.finish_reason, dropped_context_turns=audio.dropped_context_turns)

    async def encode_audio(self, pcm: np.ndarray) -> np.ndarray:
        codes = await self._run(lambda: self.loaded.codec.encode(pcm))
        return codes.cpu().numpy()

    async def info(self) -> dict[str, Any]:
        return {
            **self.loaded.info,
            "engine": "reference",
            "slots": self.generator.max_batch_size,
            "max_positions": min(MAX_POSITIONS, self.loaded.model.max_seq_len),
            "max_audio_length_ms": (self.loaded.model.max_seq_len - 1) * FRAME_MS,
            "frame_ms": FRAME_MS,
            "frame_samples": FRAME_SAMPLES,
            "num_codebooks": NUM_CODEBOOKS,
            "sample_rate": SAMPLE_RATE,
        }

    async def check_health(self) -> None:
        """Raise unless the engine is open and its weights are finite (one cheap read)."""
        if self._closed:
            raise RuntimeError("engine is closed")
        head = self.loaded.model.codebook0_head.weight
        if not bool(torch.isfinite(head).all()):
            raise RuntimeError("model weights are not finite")

    def close(self) -> None:
        self._closed = True
