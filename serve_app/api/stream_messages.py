"""The messages of `/v1/audio/speech/stream`, the WebSocket for text that arrives as it is written.

Client → server, JSON text frames, each naming a `context_id` (one utterance stream; several may be
open on one socket):

    {"type": "text", "context_id": "c1", "text": "Hello, ", "voice": "nova", "output_format": "pcm_24000"}
    {"type": "text", "context_id": "c1", "text": "how are you today? "}
    {"type": "flush", "context_id": "c1"}     # speak what has arrived, boundary or not
    {"type": "close", "context_id": "c1"}     # no more text: speak the rest, then `done`
    {"type": "cancel", "context_id": "c1"}    # stop now (barge-in): `done` with finish_reason cancelled
    {"type": "close"}                         # no context: finish every context, then close the socket

A context's options (voice, speaker, output_format, speed, sampling, lexicon, ...) come with its first
message; later messages carry text only. Server → client: `audio` (base64 bytes of `output_format`
with the context id, a sequence number, the audio's offset and duration in ms and the span of the
context's text it speaks), `flushed`, `done` (exactly one per context, with its finish reason) and
`error`. Times are those of the audio sent, after any speed change.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from serve_app.api.schemas import MAX_SPEECH_MS, LexiconEntries, Speaker, Speed, VoiceId
from serve_app.audio.formats import OutputFormat
from serve_app.engine.types import FRAME_MS, SAMPLE_RATE

__all__ = [
    "CONTEXT_OPTIONS",
    "CancelMessage",
    "ClientMessage",
    "CloseMessage",
    "FlushMessage",
    "TextMessage",
    "audio_message",
    "done_message",
    "error_message",
]

ContextId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


def _output_format(name: str) -> str:
    OutputFormat.parse(name)  # a ValueError names the problem (a 422 for the message)
    return name


OutputFormatName = Annotated[
    str,
    Field(
        max_length=32,
        description="codec_rate[_kbps]: pcm_24000, pcm_16000, ulaw_8000, opus_24000, mp3_44100_128, ...",
    ),
    AfterValidator(_output_format),
]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextMessage(_Message):
    type: Literal["text"]
    context_id: ContextId = "default"
    text: str = Field(description="The next piece of text, as the language model wrote it.")
    # A context's options: taken from its first message.
    voice: VoiceId | None = Field(None, description="A built-in voice name or a saved voice id.")
    speaker: Speaker = 1
    output_format: OutputFormatName = "pcm_24000"
    speed: Speed = 1.0
    normalize: bool = True
    lexicon: LexiconEntries | None = None
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    temperature: float | None = Field(None, gt=0, le=2.0)
    top_k: int | None = Field(None, ge=1, le=2051)
    max_duration_ms: int = Field(MAX_SPEECH_MS, ge=FRAME_MS, le=MAX_SPEECH_MS)


CONTEXT_OPTIONS = frozenset(TextMessage.model_fields) - {"type", "context_id", "text"}


class FlushMessage(_Message):
    type: Literal["flush"]
    context_id: ContextId = "default"


class CancelMessage(_Message):
    type: Literal["cancel"]
    context_id: ContextId = "default"


class CloseMessage(_Message):
    type: Literal["close"]
    context_id: ContextId | None = None


ClientMessage = Annotated[
    TextMessage | FlushMessage | CancelMessage | CloseMessage, Field(discriminator="type")
]


def audio_message(
    context_id: str, seq: int, data: bytes, offset: int, samples: int, span: tuple[int, int], segment: int
) -> dict[str, Any]:
    """`offset` and `samples` count 24 kHz samples of the context's audio as sent (after any speed change)."""
    return {
        "type": "audio",
        "context_id": context_id,
        "seq": seq,
        "audio": base64.b64encode(data).decode("ascii"),
        "offset_ms": round(offset * 1000 / SAMPLE_RATE, 3),
        "duration_ms": round(samples * 1000 / SAMPLE_RATE, 3),
        "text_span": list(span),
        "segment": segment,
    }


def done_message(context_id: str, finish_reason: str, samples: int, segments: int) -> dict[str, Any]:
    return {
        "type": "done",
        "context_id": context_id,
        "finish_reason": finish_reason,
        "duration_ms": round(samples * 1000 / SAMPLE_RATE, 3),
        "segments": segments,
    }


def error_message(message: str, code: int | str, context_id: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if context_id is not None:
        out["context_id"] = context_id
    return out
