"""A fake `SpeechEngine` and helpers for API tests (no model, no Ray).

The fake honours the protocol: tones whose length grows with the text, codes of shape (frames, 32),
streamed chunks, `encode_audio` giving ceil(len / 1920) frames. Same text + speaker + seed gives the
same audio; no seed gives a random one. It records what it was asked, so tests can assert on the
context the API built.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import uvicorn
from fastapi.testclient import TestClient

from serve_app.api.app import create_app
from serve_app.api.settings import ApiSettings
from serve_app.engine.types import (
    FRAME_SAMPLES,
    NUM_CODEBOOKS,
    SAMPLE_RATE,
    Audio,
    AudioChunk,
    EngineOverloadedError,
    FinishReason,
    GenerationRequest,
    PromptTooLongError,
)


def _seed_of(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


class FakeEngine:
    def __init__(
        self,
        *,
        chunk_frames: int = 2,
        bad_attempts: int = 0,
        bad_kind: str = "silent",
        overloaded: bool = False,
        healthy: bool = True,
        max_prompt_chars: int = 2000,
        delay_s: float = 0.0,
    ) -> None:
        self.chunk_frames = chunk_frames
        self.bad_attempts = bad_attempts  # the first N generations are bad audio (quality checks)
        self.bad_kind = bad_kind
        self.overloaded = overloaded
        self.healthy = healthy
        self.max_prompt_chars = max_prompt_chars
        self.delay_s = delay_s
        self.requests: list[GenerationRequest] = []
        self.results: list[Audio] = []  # what generate() returned, in order
        self.encoded: list[np.ndarray] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.chunks_yielded = 0
        self.streams_closed_early = 0
        self.release_stream = threading.Event()  # streams pause after their first chunk until set
        self.release_stream.set()

    # -- the fake model -----------------------------------------------------------------------
    def frames_for(self, request: GenerationRequest) -> int:
        return min(request.max_frames, 4 + len(request.text) // 3)

    def _make(self, request: GenerationRequest) -> tuple[np.ndarray, np.ndarray]:
        frames = self.frames_for(request)
        seed = request.sampling.seed
        rng = np.random.default_rng(
            _seed_of(
                request.text, request.speaker, seed, request.sampling.temperature, request.sampling.top_k
            )
            if seed is not None
            else None
        )
        codes = rng.integers(1, 2048, size=(frames, NUM_CODEBOOKS), dtype=np.int64)
        freq = 150.0 + 100.0 * request.speaker + rng.uniform(0, 50)
        t = np.arange(frames * FRAME_SAMPLES) / SAMPLE_RATE
        pcm = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        if len(self.requests) <= self.bad_attempts:
            pcm = np.zeros_like(pcm) if self.bad_kind == "silent" else np.sign(pcm).astype(np.float32)
        return pcm, codes

    async def _admit(self, request: GenerationRequest) -> None:
        if self.overloaded:
            raise EngineOverloadedError("no free slot")
        if not request.text.strip():
            raise ValueError("text must not be empty")  # as the engine
        prompt = len(request.text) + sum(len(s.text) for s in request.context)
        if len(request.text) > self.max_prompt_chars:
            raise PromptTooLongError(f"{prompt} characters do not fit")
        for segment in request.context:
            assert segment.audio is not None or segment.codes is not None
            if segment.codes is not None:
                assert segment.codes.ndim == 2 and segment.codes.shape[1] == NUM_CODEBOOKS
        self.requests.append(request)

    # -- SpeechEngine ---------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> Audio:
        await self._admit(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            pcm, codes = self._make(request)
        finally:
            self.in_flight -= 1
        reason = FinishReason.LENGTH if len(codes) == request.max_frames else FinishReason.END_OF_AUDIO
        self.results.append(Audio(pcm=pcm, codes=codes, finish_reason=reason))
        return self.results[-1]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[AudioChunk]:
        await self._admit(request)
        pcm, codes = self._make(request)
        frames = len(codes)
        reason = FinishReason.LENGTH if frames == request.max_frames else FinishReason.END_OF_AUDIO  # as generate
        finished = False
        try:
            for start in range(0, frames, self.chunk_frames):
                stop = min(frames, start + self.chunk_frames)
                last = stop == frames
                self.chunks_yielded += 1
                yield AudioChunk(
                    pcm=pcm[start * FRAME_SAMPLES : stop * FRAME_SAMPLES],
                    codes=codes[start:stop],
                    frames=stop - start,
                    is_last=last,
                    finish_reason=reason if last else None,
                )
                while not self.release_stream.is_set():
                    await asyncio.sleep(0.005)
            finished = True
        finally:
            if not finished:
                self.streams_closed_early += 1

    async def encode_audio(self, pcm: np.ndarray) -> np.ndarray:
        self.encoded.append(pcm)
        frames = math.ceil(len(pcm) / FRAME_SAMPLES)
        rng = np.random.default_rng(_seed_of(pcm.tobytes()))
        return rng.integers(1, 2048, size=(frames, NUM_CODEBOOKS), dtype=np.int64)

    async def info(self) -> dict[str, Any]:
        return {"model": "fake-csm", "revision": "rev-1", "device": "cpu", "slots": 4}

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("engine still warming up")


class SilentModel(FakeEngine):
    """A model that ends every utterance at once (its end-of-audio frame first): no audio at all."""

    def frames_for(self, request: GenerationRequest) -> int:
        return 0


def make_client(tmp_path: Path, engine: Any | None = None, **settings: Any) -> TestClient:
    """A TestClient over `create_app` with voices under `tmp_path` (server errors become 500s, not raises)."""
    app = create_app(engine or FakeEngine(), ApiSettings(voices_dir=tmp_path / "voices", **settings))
    return TestClient(app, raise_server_exceptions=False)


def wav_bytes(seconds: float = 0.5, rate: int = SAMPLE_RATE, channels: int = 1, freq: float = 220.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * freq * t)
    data = np.stack([mono] * channels, axis=1) if channels > 1 else mono
    buf = io.BytesIO()
    sf.write(buf, data.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def wav_b64(seconds: float = 0.5, rate: int = SAMPLE_RATE, channels: int = 1) -> str:
    return base64.b64encode(wav_bytes(seconds, rate, channels)).decode()


def read_wav(data: bytes) -> tuple[np.ndarray, int, int]:
    """(samples, sample rate, channels) read back with soundfile."""
    pcm, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return pcm[:, 0], rate, pcm.shape[1]


def not_audio_b64() -> str:
    return base64.b64encode(b"these bytes are a plain text note, not a recording " * 10).decode()


@contextlib.contextmanager
def serve_over_http(app: Any, config: uvicorn.Config | None = None) -> Iterator[str]:
    """Run `app` with uvicorn (`config`, by default a plain one on a free loopback port) in a thread;
    yields the base URL."""
    server = uvicorn.Server(
        config or uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def on_event_loop() -> bool:
    """Whether the caller runs on an event loop's thread (not in the thread pool)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
