"""What each client method sends and how its answer is read, shared by the sync and async clients.

Every public call is described once here as a `Call` (method, path, JSON body, how to read the reply), so
`TTSClient` and `AsyncTTSClient` differ only in how they do I/O.
"""
from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union
from urllib.parse import quote

from serve_app.client.errors import TTSError

AudioSource = Union[str, "os.PathLike[str]", bytes]
"""A path to an audio file, or the file's bytes."""

Reader = Literal["bytes", "json", "none", "b64list", "voices"]


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json: dict[str, Any] | None = None
    read: Reader = "json"


def audio_b64(source: AudioSource) -> str:
    """Base64 of an audio file's bytes; the server decodes the container, so no decoding here."""
    data = source if isinstance(source, bytes) else Path(os.fspath(source)).read_bytes()
    return base64.b64encode(data).decode("ascii")


def context_payload(context: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Turn `{text, speaker, audio | audio_b64}` items into the wire form `{text, speaker, audio_b64}`."""
    items = []
    for turn in context or ():
        if "audio_b64" in turn:
            encoded = turn["audio_b64"]
        elif "audio" in turn:
            encoded = audio_b64(turn["audio"])
        else:
            raise ValueError("each context turn needs 'audio' (path or bytes) or 'audio_b64'")
        items.append({"text": turn["text"], "speaker": int(turn.get("speaker", 0)), "audio_b64": encoded})
    return items


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    """Leave unset options out so the server's defaults apply."""
    return {k: v for k, v in body.items() if v is not None}


def speak(
    text: str,
    speaker: int,
    max_duration_ms: int,
    *,
    context: Sequence[Mapping[str, Any]] | None = None,
    seed: int | None = None,
    voice: str | None = None,
    response_format: str | None = None,
    stream: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Call:
    body = _drop_none(
        {
            "text": text,
            "speaker": speaker,
            "max_duration_ms": max_duration_ms,
            "context": context_payload(context) if context else None,
            "seed": seed,
            "voice": voice,
            "response_format": response_format,
            "stream": stream or None,
        }
    )
    body.update(extra or {})
    return Call("POST", "/speak", body, "bytes")


def clone_voice(
    text: str, reference_audio: AudioSource, reference_text: str, max_duration_ms: int
) -> Call:
    body = {
        "text": text,
        "reference_audio_b64": audio_b64(reference_audio),
        "reference_text": reference_text,
        "max_duration_ms": max_duration_ms,
    }
    return Call("POST", "/clone_voice", body, "bytes")


def conversation(turns: Sequence[Mapping[str, Any]], max_total_duration_ms: int) -> Call:
    body = {"turns": [dict(t) for t in turns], "max_total_duration_ms": max_total_duration_ms}
    return Call("POST", "/conversation", body, "bytes")


def batch_speak(
    texts: Sequence[str], speaker: int, max_duration_per_text_ms: int, extra: Mapping[str, Any] | None = None
) -> Call:
    body = {"texts": list(texts), "speaker": speaker, "max_duration_per_text_ms": max_duration_per_text_ms}
    body.update(extra or {})
    return Call("POST", "/batch_speak", body, "b64list")


def contextual_speak(
    text: str, session_id: str, speaker: int, max_duration_ms: int, extra: Mapping[str, Any] | None
) -> Call:
    body = {"text": text, "session_id": session_id, "speaker": speaker, "max_duration_ms": max_duration_ms}
    body.update(extra or {})
    return Call("POST", "/contextual_speak", body, "bytes")


def reset_session(session_id: str) -> Call:
    return Call("DELETE", f"/sessions/{quote(session_id, safe='')}", None, "none")


def add_voice(name: str, audio: AudioSource, transcript: str, speaker: int = 0) -> Call:
    body = {"name": name, "audio_b64": audio_b64(audio), "transcript": transcript, "speaker": speaker}
    return Call("POST", "/v1/voices", body, "json")


def list_voices() -> Call:
    return Call("GET", "/v1/voices", None, "voices")


def delete_voice(voice_id: str) -> Call:
    return Call("DELETE", f"/v1/voices/{quote(voice_id, safe='')}", None, "none")


def health() -> Call:
    return Call("GET", "/health", None, "json")


def info() -> Call:
    return Call("GET", "/info", None, "json")


def read_reply(call: Call, content: bytes, json_body: Any) -> Any:
    """Turn a 2xx reply into the method's return value (`json_body` is parsed lazily by the caller)."""
    if call.read == "bytes":
        return content
    if call.read == "none":
        return None
    try:
        data = json_body()
    except ValueError as exc:  # a proxy's or captive portal's page answering in the service's place
        raise TTSError(f"{call.path} answered with something other than JSON: {content[:80]!r}") from exc
    if call.read == "b64list":
        return [base64.b64decode(item) for item in data]
    if call.read == "voices":
        # Accept a bare list or a list wrapped OpenAI-style ({"data": [...]}) or as {"voices": [...]}.
        if isinstance(data, dict):
            data = data.get("data", data.get("voices", []))
        return list(data)
    return data
