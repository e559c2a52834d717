"""`MeteredEngine`: a `SpeechEngine` that records frames, audio seconds, real-time factor and
generations in progress from what another one produces."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from serve_app.constants import SAMPLE_RATE
from serve_app.engine.types import Audio, AudioChunk, GenerationRequest
from serve_app.observability.metrics import generations_in_progress, observe_generation


class MeteredEngine:
    """Everything but `generate` and `stream` is delegated unchanged."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def generate(self, request: GenerationRequest) -> Audio:
        start = time.perf_counter()
        generations_in_progress(+1)
        try:
            audio = await self._engine.generate(request)
        finally:
            generations_in_progress(-1)
        observe_generation(len(audio.codes), audio.duration_s, time.perf_counter() - start)
        return audio

    async def stream(self, request: GenerationRequest) -> AsyncIterator[AudioChunk]:
        start = time.perf_counter()
        frames = samples = 0
        chunks = self._engine.stream(request)
        generations_in_progress(+1)
        try:
            async for chunk in chunks:
                frames += chunk.frames
                samples += int(np.asarray(chunk.pcm).shape[-1])
                yield chunk
        finally:
            generations_in_progress(-1)
            closer = getattr(chunks, "aclose", None)
            if closer is not None:
                await closer()  # cancel the engine's generation promptly when our caller stops early
            observe_generation(frames, samples / SAMPLE_RATE, time.perf_counter() - start)

    async def encode_audio(self, pcm: np.ndarray) -> np.ndarray:
        return await self._engine.encode_audio(pcm)

    async def info(self) -> dict[str, Any]:
        return await self._engine.info()

    async def check_health(self) -> None:
        await self._engine.check_health()
