"""OpenAI-compatible speech: `POST /v1/audio/speech` and `GET /v1/models`.

OpenAI's voice names map onto CSM's two speakers (CSM has no named voices; the split is arbitrary
but fixed); "0"/"1" pick a speaker directly and a saved voice id clones that voice. `speed` is
applied after generation with FFmpeg's atempo (pitch kept). `instructions` is accepted for
compatibility and ignored: CSM has no style prompt.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from serve_app.api.deps import ServicesDep
from serve_app.api.errors import ApiError, request_id_of
from serve_app.api.responses import (
    AUDIO_RESPONSES,
    audio_headers,
    cached_response,
    encode_response,
    sse_response,
    streaming_response,
)
from serve_app.api.schemas import OpenAISpeechRequest, VoiceRef
from serve_app.api.voices import SavedVoice
from serve_app.engine.types import GenerationRequest

router = APIRouter(prefix="/v1", tags=["openai"])

OPENAI_VOICES: dict[str, int] = {
    "alloy": 0,
    "ash": 1,
    "ballad": 0,
    "coral": 1,
    "echo": 0,
    "fable": 1,
    "onyx": 0,
    "nova": 1,
    "sage": 0,
    "shimmer": 1,
    "verse": 0,
    "marin": 1,
    "cedar": 0,
}
MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
MAX_INPUT_CHARS = 4096  # OpenAI's own limit


def _speaker_for(voice: str) -> int | None:
    name = voice.strip().lower()
    if name in ("0", "1"):
        return int(name)
    return OPENAI_VOICES.get(name)


@router.post("/audio/speech", responses=AUDIO_RESPONSES, response_class=Response)
async def create_speech(body: OpenAISpeechRequest, request: Request, svc: ServicesDep) -> Response:
    synth = svc.synth
    if len(body.input) > MAX_INPUT_CHARS:
        raise ApiError(
            413, f"input has {len(body.input)} characters, over the {MAX_INPUT_CHARS}-character limit"
        )
    text = synth.text(body.input, normalize=True, field="input")
    voice_name = body.voice.id if isinstance(body.voice, VoiceRef) else body.voice
    speaker = None if isinstance(body.voice, VoiceRef) else _speaker_for(voice_name)
    saved: SavedVoice | None = None
    if speaker is None:
        if not voice_name.startswith("voice_"):
            raise ApiError(
                400,
                f"unknown voice {voice_name!r}: use 0, 1, one of {', '.join(OPENAI_VOICES)}, "
                "or a saved voice id from GET /v1/voices",
            )
        saved = await synth.voice(voice_name)
        speaker = saved.info.speaker
    generation = GenerationRequest(
        text=text,
        speaker=speaker,
        context=[synth.voice_reference(saved, True)] if saved else [],
        max_audio_length_ms=body.max_duration_ms,
        sampling=synth.sampling(body.temperature, body.top_k, body.seed),
        request_id=request_id_of(request),
    )
    fmt = body.response_format
    if body.stream_format == "sse":
        return sse_response(await synth.stream(generation), fmt, body.speed)

    key = await svc.cache_key(
        "openai_speech",
        body,
        text=text,
        speaker=speaker,
        speed=body.speed,
        max_ms=body.max_duration_ms,
        voice=saved.info.model_dump() if saved else None,
    )
    if key is None:  # nothing to cache: stream, as OpenAI does
        return streaming_response(await synth.stream(generation), fmt, {}, body.speed)

    async def produce():
        audio = await synth.generate(generation)
        return await encode_response(audio.pcm, fmt, audio_headers(audio), body.speed)

    return await cached_response(svc.cache, key, produce)


@router.get("/models")
async def list_models(svc: ServicesDep) -> dict:
    model = await svc.synth.model()
    ids = [model["name"], *(alias for alias in MODEL_ALIASES if alias != model["name"])]
    return {
        "object": "list",
        "data": [{"id": i, "object": "model", "created": 0, "owned_by": "sesame"} for i in ids],
    }
