"""Test support for the users' tools: a loopback uvicorn server, a tone engine and an app to serve.

`tools_app()` is the real `create_app(Engine.from_preset("tiny-random"))` once both exist, and until then
a small stand-in that follows the endpoint contract (same paths, bodies, errors). Either way the tools
are exercised over real HTTP on 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import socket
import struct
import threading
import time
import uuid
from typing import Any, AsyncIterator, Iterator, Optional

import numpy as np
import soundfile as sf
import uvicorn
from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from serve_app import metrics
from serve_app.engine.types import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    Audio,
    AudioChunk,
    EngineOverloadedError,
    FinishReason,
    GenerationRequest,
)
from serve_app.web.routes import router as web_router


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

    def _frames(self, request: GenerationRequest) -> int:
        return max(1, min(request.max_frames, 2 + len(request.text) // 4))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[AudioChunk]:
        if "overload" in request.text:
            raise EngineOverloadedError("all slots busy")
        self.requests.append(request)
        total = self._frames(request)
        pcm = tone(total * FRAME_SAMPLES / SAMPLE_RATE, 200.0 + 40 * request.speaker)
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
# Stand-in app following the endpoint contract
# ---------------------------------------------------------------------------------------------------
MAX_TEXT_CHARS = 400


class ContextIn(BaseModel):
    text: str
    speaker: int = Field(0, ge=0, le=1)
    audio_b64: str


class SpeakIn(BaseModel):
    text: str = Field(min_length=1)
    speaker: int = Field(1, ge=0, le=1)
    context: list[ContextIn] = []
    max_duration_ms: int = Field(10000, ge=80, le=60000)
    seed: Optional[int] = None
    voice: Optional[str] = None
    stream: bool = False
    response_format: str = "wav"


class TurnIn(BaseModel):
    speaker: int = Field(ge=0, le=1)
    text: str = Field(min_length=1)
    pause_ms: int = Field(500, ge=0, le=2000)


class ConversationIn(BaseModel):
    turns: list[TurnIn] = Field(min_length=1)
    max_total_duration_ms: int = Field(30000, ge=5000, le=60000)


class CloneIn(BaseModel):
    text: str = Field(min_length=1)
    reference_audio_b64: str
    reference_text: str
    max_duration_ms: int = Field(15000, ge=1000, le=30000)


class BatchIn(BaseModel):
    texts: list[str] = Field(min_length=1, max_length=10)
    speaker: int = Field(0, ge=0, le=1)
    max_duration_per_text_ms: int = Field(10000, ge=1000, le=20000)


class ContextualIn(BaseModel):
    text: str = Field(min_length=1)
    speaker: int = Field(0, ge=0, le=1)
    session_id: str = Field(min_length=1)
    max_duration_ms: int = Field(10000, ge=80, le=60000)


class VoiceIn(BaseModel):
    name: str = Field(min_length=1)
    audio_b64: str
    transcript: str


def _decode_audio(b64: str) -> np.ndarray:
    try:
        data = base64.b64decode(b64, validate=True)
    except ValueError as exc:
        raise HTTPException(400, f"audio is not valid base64: {exc}") from exc
    try:
        pcm, _ = sf.read(io.BytesIO(data), dtype="float32")
    except Exception as exc:  # soundfile raises its own LibsndfileError
        raise HTTPException(400, f"audio could not be decoded: {exc}") from exc
    return pcm if pcm.ndim == 1 else pcm.mean(axis=1)


def standin_app(engine: Optional[Any] = None) -> FastAPI:
    """The endpoint contract over `engine` (a ToneEngine by default), wired with metrics and the page."""
    engine = engine or ToneEngine()
    app = FastAPI()
    voices: dict[str, dict[str, Any]] = {}
    sessions: dict[str, list[str]] = {}
    cache: dict[tuple, bytes] = {}

    @app.exception_handler(EngineOverloadedError)
    async def overloaded(_: Any, exc: EngineOverloadedError) -> JSONResponse:
        return JSONResponse({"detail": f"engine overloaded: {exc}"}, status_code=503, headers={"Retry-After": "1"})

    def check_text(text: str) -> None:
        if len(text) > MAX_TEXT_CHARS:
            raise HTTPException(413, f"text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")

    async def generate(text: str, speaker: int, max_ms: int) -> np.ndarray:
        check_text(text)
        audio = await engine.generate(GenerationRequest(text=text, speaker=speaker, max_audio_length_ms=max_ms))
        return audio.pcm

    def wav_response(pcm: np.ndarray, headers: Optional[dict[str, str]] = None) -> Response:
        return Response(wav_bytes(pcm), media_type="audio/wav", headers=headers)

    @app.post("/speak")
    async def speak(body: SpeakIn) -> Response:
        check_text(body.text)
        for turn in body.context:
            _decode_audio(turn.audio_b64)
        if body.voice is not None and body.voice not in voices:
            raise HTTPException(404, f"no saved voice with id {body.voice!r}")
        request = GenerationRequest(text=body.text, speaker=body.speaker, max_audio_length_ms=body.max_duration_ms)
        if body.stream:
            chunks = engine.stream(request)
            first = await chunks.__anext__()  # errors become status codes before the body starts

            async def body_iter() -> AsyncIterator[bytes]:
                yield streaming_wav_header() + pcm16(first.pcm)
                async for chunk in chunks:
                    yield pcm16(chunk.pcm)

            return StreamingResponse(body_iter(), media_type="audio/wav")
        key = (body.text, body.speaker, body.max_duration_ms, body.seed)
        if body.seed is not None and key in cache:
            return Response(cache[key], media_type="audio/wav", headers={"X-Cache": "hit"})
        audio = await engine.generate(request)
        data = wav_bytes(audio.pcm)
        headers = {}
        if body.seed is not None:
            cache[key] = data
            headers["X-Cache"] = "miss"
        return Response(data, media_type="audio/wav", headers=headers)

    @app.post("/conversation")
    async def conversation(body: ConversationIn) -> Response:
        parts = []
        for turn in body.turns:
            parts.append(await generate(turn.text, turn.speaker, body.max_total_duration_ms // len(body.turns)))
            parts.append(np.zeros(turn.pause_ms * SAMPLE_RATE // 1000, dtype=np.float32))
        return wav_response(np.concatenate(parts))

    @app.post("/clone_voice")
    async def clone_voice(body: CloneIn) -> Response:
        _decode_audio(body.reference_audio_b64)
        return wav_response(await generate(body.text, 0, body.max_duration_ms))

    @app.post("/batch_speak")
    async def batch_speak(body: BatchIn) -> list[str]:
        pcms = await asyncio.gather(*(generate(t, body.speaker, body.max_duration_per_text_ms) for t in body.texts))
        return [base64.b64encode(wav_bytes(p)).decode() for p in pcms]

    @app.post("/contextual_speak")
    async def contextual_speak(body: ContextualIn) -> Response:
        history = sessions.setdefault(body.session_id, [])
        pcm = await generate(body.text, body.speaker, body.max_duration_ms)
        history.append(body.text)
        return wav_response(pcm, {"X-Context-Turns": str(len(history) - 1)})

    @app.delete("/sessions/{session_id}")
    async def reset_session(session_id: str) -> dict[str, Any]:
        existed = sessions.pop(session_id, None) is not None
        return {"session_id": session_id, "deleted": existed}

    @app.post("/v1/voices", status_code=201)
    async def add_voice(body: VoiceIn) -> dict[str, Any]:
        pcm = _decode_audio(body.audio_b64)
        voice_id = "voice_" + uuid.uuid4().hex[:12]
        voices[voice_id] = {"id": voice_id, "name": body.name, "transcript": body.transcript,
                            "frames": int((await engine.encode_audio(pcm)).shape[0])}
        return voices[voice_id]

    @app.get("/v1/voices")
    async def list_voices() -> dict[str, Any]:
        return {"object": "list", "data": list(voices.values())}

    @app.delete("/v1/voices/{voice_id}")
    async def delete_voice(voice_id: str) -> dict[str, Any]:
        if voices.pop(voice_id, None) is None:
            raise HTTPException(404, f"no saved voice with id {voice_id!r}")
        return {"id": voice_id, "deleted": True}

    @app.get("/health")
    async def health() -> dict[str, str]:
        await engine.check_health()
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {**(await engine.info()), "sample_rate": SAMPLE_RATE}

    metrics.instrument_app(app)
    app.include_router(web_router)
    return app


def real_app_factory() -> Optional[Any]:
    """`create_app(MeteredEngine(Engine.from_preset("tiny-random")))` when both layers exist, else None."""
    try:
        from serve_app.api.app import create_app  # noqa: F401
        from serve_app.engine.engine import Engine  # noqa: F401
    except ImportError:
        return None

    def build() -> Any:
        from serve_app.api.app import create_app
        from serve_app.engine.engine import Engine

        return create_app(metrics.MeteredEngine(Engine.from_preset("tiny-random")))

    return build
