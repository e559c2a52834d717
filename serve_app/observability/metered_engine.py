"""`MeteredEngine`: a `SpeechEngine` that records frames, audio seconds, real-time factor, why each
utterance ended and generations in progress from what another one produces."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from serve_app.constants import SAMPLE_RATE
from serve_app.engine.types import Audio, AudioChunk, EngineOverloadedError, GenerationRequest
from serve_app.observability.metrics import generations_in_progress, observe_generation


def _failure_reason(exc: BaseException) -> str:
    """Why an utterance ended without its audio: an overload refusal (capacity, a 503) is no fault,
    so an alert on `error` does not fire when the service is merely full."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "overloaded" if isinstance(exc, EngineOverloadedError) else "error"


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
        except BaseException as exc:
            reason = _failure_reason(exc)
            observe_generation(0, 0.0, time.perf_counter() - start, reason)
            raise
        finally:
            generations_in_progress(-1)
        wall = time.perf_counter() - start
        observe_generation(len(audio.codes), audio.duration_s, wall, audio.finish_reason.value)
        return audio

    async def stream(self, request: GenerationRequest) -> AsyncIterator[AudioChunk]:
        start = time.perf_counter()
        frames = samples = 0
        reason = "cancelled"  # unless the last chunk or an error says otherwise
        chunks = self._engine.stream(request)
        generations_in_progress(+1)
        try:
            async for chunk in chunks:
                frames += chunk.frames
                samples += int(np.asarray(chunk.pcm).shape[-1])
                if chunk.is_last and chunk.finish_reason is not None:
                    reason = chunk.finish_reason.value
                yield chunk
        except Exception as exc:
            reason = _failure_reason(exc)
            raise
        finally:
            generations_in_progress(-1)
            closer = getattr(chunks, "aclose", None)
            if closer is not None:
                await closer()  # cancel the engine's generation promptly when our caller stops early
            observe_generation(frames, samples / SAMPLE_RATE, time.perf_counter() - start, reason)

    async def encode_audio(self, pcm: np.ndarray) -> np.ndarray:
        return await self._engine.encode_audio(pcm)

    async def info(self) -> dict[str, Any]:
        return await self._engine.info()

    async def check_health(self) -> None:
        await self._engine.check_health()
