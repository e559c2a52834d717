"""Audio responses: whole files (optionally cached), chunked streams, and OpenAI's SSE events."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
from fastapi import Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from serve_app.api.cache import CachedResponse, ResponseCache
from serve_app.api.errors import engine_error, error_body
from serve_app.api.synthesis import AudioStream
from serve_app.audio.encode import encode_audio, open_stream_encoder
from serve_app.audio.formats import CONTENT_TYPES, OutputFormat
from serve_app.audio.tempo import TempoStretcher, change_speed
from serve_app.engine.types import SAMPLE_RATE, Audio

logger = logging.getLogger("serve_app.api")

DEFAULT_RETRY_AFTER_S = 1
"""Retry-After, in seconds, named in an overload error sent inside a stream."""

__all__ = [
    "audio_headers",
    "cached_response",
    "encode_response",
    "sse_response",
    "streaming_response",
]

AUDIO_RESPONSES: dict[int | str, dict] = {
    200: {
        "content": {ct: {"schema": {"type": "string", "format": "binary"}} for ct in CONTENT_TYPES.values()},
        "description": "Audio in the requested format.",
    }
}


def audio_headers(audio: Audio, attachment: str | None = None) -> dict[str, str]:
    headers = {
        "X-Finish-Reason": audio.finish_reason.value,
        "X-Context-Dropped-Turns": str(audio.dropped_context_turns),
    }
    if attachment:
        headers["Content-Disposition"] = f'attachment; filename="{attachment}"'
    return headers


async def encode_response(
    pcm: np.ndarray, output: OutputFormat, headers: dict[str, str], speed: float = 1.0
) -> CachedResponse:
    """Encode a whole utterance into a complete file (in the thread pool: encoding is CPU work)."""

    def work() -> bytes:
        return encode_audio(change_speed(pcm, speed), output)

    return CachedResponse(await run_in_threadpool(work), output.content_type, headers)


async def cached_response(
    cache: ResponseCache, key: str | None, produce: Callable[[], Awaitable[CachedResponse]]
) -> Response:
    """Serve from the cache when `key` is given and present; otherwise produce (and store if keyed)."""
    if key is None:
        entry, state = await produce(), "bypass"
    elif (hit := cache.get(key)) is not None:
        entry, state = hit, "hit"
    else:
        entry, joined = await cache.produce_once(key, produce)
        state = "hit" if joined else "miss"
    return Response(entry.body, media_type=entry.media_type, headers={**entry.headers, "X-Cache": state})


class _Tally:
    """Seconds of audio sent so far (after any speed change)."""

    def __init__(self) -> None:
        self.samples = 0

    def add(self, pcm: np.ndarray) -> np.ndarray:
        self.samples += len(pcm)
        return pcm

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE


async def _encoded_chunks(
    stream: AudioStream, output: OutputFormat, speed: float, tally: _Tally | None = None
) -> AsyncIterator[bytes]:
    encoder = open_stream_encoder(output)
    stretcher = TempoStretcher(speed) if speed != 1.0 else None
    tally = tally or _Tally()
    try:
        async for chunk in stream.chunks():
            data = encoder.write(tally.add(stretcher.process(chunk.pcm) if stretcher else chunk.pcm))
            if data:
                yield data
        tail = encoder.write(tally.add(stretcher.flush())) if stretcher else b""
        if tail := tail + encoder.close():
            yield tail
    finally:
        encoder.close()  # idempotent; frees FFmpeg's muxer when the client leaves early


def streaming_response(
    stream: AudioStream, output: OutputFormat, headers: dict[str, str], speed: float = 1.0
) -> StreamingResponse:
    """Chunked audio: the first chunk is already there, so bytes leave at once."""
    return StreamingResponse(
        _encoded_chunks(stream, output, speed),
        media_type=output.content_type,
        headers={**headers, **stream.server_timing(), "X-Cache": "bypass"},
    )


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


async def _sse_events(
    stream: AudioStream, output: OutputFormat, speed: float, input_characters: int
) -> AsyncIterator[bytes]:
    tally = _Tally()
    finish_reason: str | None = None
    try:
        async for data in _encoded_chunks(stream, output, speed, tally):
            yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
    except Exception as exc:  # after the first event, the stream is the only way to say it
        # A later segment failed (over the model's limit, the engine overloaded, a replica lost):
        # the client gets the reason in the stream, and a done event that says so.
        mapped = engine_error(exc, DEFAULT_RETRY_AFTER_S)  # a replica lost mid-way: 503, as before the start
        status, detail = (mapped.status_code, mapped.detail) if mapped else (500, "generation failed")
        if status >= 500:
            logger.error("stream failed after its first audio", exc_info=exc)
        error = error_body("/v1/", status, detail)["error"]
        yield _sse({"type": "error", "error": {**error, "code": status}})
        finish_reason = "error"
    else:
        finish_reason = stream.finish_reason.value if stream.finish_reason is not None else None
    usage = {"input_characters": input_characters, "output_audio_seconds": round(tally.seconds, 3)}
    done: dict[str, object] = {"type": "speech.audio.done", "usage": usage}
    if finish_reason is not None:
        done["finish_reason"] = finish_reason
    yield _sse(done)


def sse_response(
    stream: AudioStream, output: OutputFormat, input_characters: int, speed: float = 1.0
) -> StreamingResponse:
    """OpenAI's `stream_format: "sse"`: base64 audio deltas, then a done event with the usage
    (characters of input, seconds of audio sent) and the finish reason."""
    return StreamingResponse(
        _sse_events(stream, output, speed, input_characters),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", **stream.server_timing(), "X-Cache": "bypass"},
    )
