"""The small interface the API layer uses to reach a speech engine.

The same FastAPI app talks to an in-process `Engine` (development, tests) or to a Ray Serve
deployment handle wrapped in an adapter (production); both satisfy `SpeechEngine`.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from serve_app.engine.types import Audio, AudioChunk, GenerationRequest


@runtime_checkable
class SpeechEngine(Protocol):
    async def generate(self, request: GenerationRequest) -> Audio:
        """Generate a whole utterance."""
        ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[AudioChunk]:
        """Yield audio chunks as frames are generated; closing the iterator cancels generation."""
        ...

    async def encode_audio(self, pcm: np.ndarray) -> np.ndarray:
        """Mono float32 24 kHz audio → Mimi codes of shape (frames, 32)."""
        ...

    async def info(self) -> dict[str, Any]:
        """Model name, revision, device, slots and limits."""
        ...

    async def check_health(self) -> None:
        """Raise if the engine cannot serve."""
        ...
