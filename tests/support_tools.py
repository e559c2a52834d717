"""Test support for the users' tools: a loopback uvicorn server, a tone engine, the app to serve.

The tools are exercised over real HTTP on 127.0.0.1 against the real API app; behind it, either a
deterministic tone engine (lengths known from the text, overload on demand) or the real tiny engine.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import uvicorn

from serve_app.engine.types import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    Audio,
    AudioChunk,
    EngineOverloadedError,
    FinishReason,
    GenerationRequest,
)


# ---------------------------------------------------------------------------------------------------
# Loopback server
# ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def serve_http(app: Any) -> Iterator[str]:
    """Run `app` with uvicorn in a thread on a free loopback port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# ---------------------------------------------------------------------------------------------------
# Audio helpers
# ---------------------------------------------------------------------------------------------------
def tone(seconds: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE), dtype=np.float32) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    pcm, rate = sf.read(io.BytesIO(data), dtype="float32")
    return pcm, rate


def streaming_wav_header(sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit mono WAV header with unknown (0xFFFFFFFF) sizes, as streamed responses start."""
    return (
        b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data" + struct.pack("<I", 0xFFFFFFFF)
    )


def pcm16(pcm: np.ndarray) -> bytes:
    return (np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes()


# ---------------------------------------------------------------------------------------------------
# A deterministic engine honouring the SpeechEngine protocol
# ---------------------------------------------------------------------------------------------------
class ToneEngine:
    """Tones whose frame count grows with the text (capped by the request), streamed frame by frame."""

    def __init__(self, frame_delay_s: float = 0.0) -> None:
        self.frame_delay_s = frame_delay_s
        self.requests: list[GenerationRequest] = []
        self.streaming = 0  # streams running now, and the most at once
        self.most_streaming = 0

    def _frames(self, request: GenerationRequest) -> int:
        return max(1, min(request.max_frames, 2 + len(request.text) // 4))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[AudioChunk]:
        if "overload" in request.text:
            raise EngineOverloadedError("all slots busy")
        self.requests.append(request)
        total = self._frames(request)
        pcm = tone(total * FRAME_SAMPLES / SAMPLE_RATE, 200.0 + 40 * request.speaker)
        self.streaming += 1
        self.most_streaming = max(self.most_streaming, self.streaming)
        try:
            for i in range(total):
                if self.frame_delay_s:
                    await asyncio.sleep(self.frame_delay_s)
                last = i == total - 1
                yield AudioChunk(
                    pcm=pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES],
                    codes=np.full((1, 32), i + 1, dtype=np.int64),
                    frames=1,
                    is_last=last,
                    finish_reason=FinishReason.END_OF_AUDIO if last else None,
                )
        finally:
            self.streaming -= 1

    async def generate(self, request: GenerationRequest) -> Audio:
        chunks = [c async for c in self.stream(request)]
        return Audio(
            pcm=np.concatenate([c.pcm for c in chunks]),
            codes=np.concatenate([c.codes for c in chunks]),
            finish_reason=FinishReason.END_OF_AUDIO,
        )

    async def encode_audio(self, pcm: np.ndarray) -> np.ndarray:
        return np.ones((max(1, -(-len(pcm) // FRAME_SAMPLES)), 32), dtype=np.int64)

    async def info(self) -> dict[str, Any]:
        return {"model": "tone", "sample_rate": SAMPLE_RATE}

    async def check_health(self) -> None:
        return None


# ---------------------------------------------------------------------------------------------------
# Headless Chromium (Debian's package, driven by Playwright; never `playwright install`)
# ---------------------------------------------------------------------------------------------------
CHROMIUM = os.environ.get("CSM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@contextlib.contextmanager
def chromium(extra_args: tuple[str, ...] = ()) -> Iterator[Any]:
    """A Playwright browser on Debian's chromium (with `extra_args`, e.g. a fake microphone).

    Skips the test when either is missing, unless CSM_REQUIRE_BROWSER=1 (set by CI), where a missing
    browser must fail rather than pass silently.
    """
    import pytest

    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        message = f"chromium not found at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CSM_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield browser
        finally:
            browser.close()


# ---------------------------------------------------------------------------------------------------
# The app under test
# ---------------------------------------------------------------------------------------------------
MAX_TEXT_CHARS = 400
"""A low text limit, so 413s are cheap to provoke."""


def api_app(engine: Any, voices_dir: Path, **settings: Any) -> Any:
    """The real API app (`create_app`, with its metrics and playground) over `engine`."""
    from serve_app.api.app import create_app
    from serve_app.api.settings import ApiSettings

    limits = {"max_text_chars": MAX_TEXT_CHARS, "max_long_text_chars": MAX_TEXT_CHARS, **settings}
    return create_app(engine, ApiSettings(voices_dir=voices_dir, **limits))


def tiny_engine() -> Any:
    """The real engine with the tiny random model."""
    from serve_app.engine.engine import Engine

    return Engine.from_preset("tiny-random")
