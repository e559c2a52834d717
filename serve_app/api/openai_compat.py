"""OpenAI-compatible speech: `POST /v1/audio/speech`, `GET /v1/models` and `GET /v1/models/{id}`.

OpenAI's voice names map onto CSM's two speakers (CSM has no named voices; the split is arbitrary
but fixed); "0"/"1" pick a speaker directly and a saved voice id clones that voice. `speed` is
applied after generation with FFmpeg's atempo (pitch kept). `instructions` is accepted for
compatibility and ignored: CSM has no style prompt.

Like OpenAI, the audio streams as it is generated, in every format whose streamed bytes are a
complete file; FLAC is sent whole, since a streamed FLAC header cannot carry its length and
libsndfile would refuse it. With a seed (or `cache`), the whole file is made and cached.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

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
    output = body.output
    if body.stream_format == "sse":
        return sse_response(await synth.stream(generation), output, len(body.input), body.speed)

    key = await svc.cache_key(
        "openai_speech",
        body,
        text=text,
        speaker=speaker,
        max_ms=body.max_duration_ms,
        voice=saved.info.model_dump() if saved else None,
    )
    if key is None and output.streams_as_file:  # nothing to cache: stream, as OpenAI does
        return streaming_response(await synth.stream(generation), output, {}, body.speed)

    async def produce():
        audio = await synth.generate(generation)
        return await encode_response(audio.pcm, output, audio_headers(audio), body.speed)

    return await cached_response(svc.cache, key, produce)


async def _model_ids(svc: ServicesDep) -> list[str]:
    """The served model's name first, then OpenAI's speech model names, which it answers too."""
    model = await svc.synth.model()
    return [model["name"], *(alias for alias in MODEL_ALIASES if alias != model["name"])]


def _model(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "sesame"}


@router.get("/models")
async def list_models(svc: ServicesDep) -> dict:
    return {"object": "list", "data": [_model(i) for i in await _model_ids(svc)]}


@router.get("/models/{model_id:path}")
async def get_model(model_id: Annotated[str, Path(max_length=256)], svc: ServicesDep) -> dict:
    """One model by id (ids may contain slashes, as Hugging Face names do); 404 if not served."""
    if model_id not in await _model_ids(svc):
        raise ApiError(404, f"model {model_id!r} not found; GET /v1/models lists the models served")
    return _model(model_id)
