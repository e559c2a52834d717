"""OpenAI-compatible speech: `POST /v1/audio/speech`, `GET /v1/models` and `GET /v1/models/{id}`.

OpenAI's voice names are built-in voices (`serve_app.api.builtin_voices`): each is pinned to a
reference prompt, so a name sounds the same on every request; "0"/"1" are CSM's two speakers as
built-in voices, and a saved voice id clones that voice. Long inputs are spoken segment by segment
(`serve_app.api.longform`). `speed` is applied after generation with FFmpeg's atempo (pitch kept).
`instructions` is accepted for compatibility and ignored: CSM has no style prompt.

Like OpenAI, the audio streams as it is generated, in every format whose streamed bytes are a
complete file; FLAC is sent whole, since a streamed FLAC header cannot carry its length and
libsndfile would refuse it. With a seed (or `cache`), the whole file is made and cached.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from serve_app.api.auth import key_of
from serve_app.api.builtin_voices import OPENAI_VOICES
from serve_app.api.deps import ServicesDep
from serve_app.api.errors import ApiError, request_id_of
from serve_app.api.longform import Narration, script_key
from serve_app.api.responses import (
    AUDIO_RESPONSES,
    audio_headers,
    cached_response,
    encode_response,
    sse_response,
    streaming_response,
)
from serve_app.api.schemas import MAX_SPEECH_MS, OpenAISpeechRequest, VoiceRef

router = APIRouter(prefix="/v1", tags=["openai"])

MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
DEFAULT_SPEECH_MS = 60_000


@router.post("/audio/speech", responses=AUDIO_RESPONSES, response_class=Response)
async def create_speech(body: OpenAISpeechRequest, request: Request, svc: ServicesDep) -> Response:
    synth = svc.synth
    script = await synth.script(body.input, normalize=True, lexicon=body.lexicon, field="input")
    voice_name = body.voice.id if isinstance(body.voice, VoiceRef) else body.voice.strip()
    try:
        voice = await synth.named_voice(voice_name, key_of(request.scope))
    except ApiError as exc:
        if exc.status_code != 404 or voice_name.startswith("voice_"):
            raise  # a saved voice's id that is gone: 404
        raise ApiError(  # as OpenAI answers an unknown voice name: 400
            400,
            f"unknown voice {voice_name!r}: use 0, 1, one of {', '.join(OPENAI_VOICES)}, another name from "
            "GET /v1/audio/voices, or a saved voice's id (or name) from GET /v1/voices",
        ) from exc
    budget_ms = body.max_duration_ms or script.default_budget_ms(DEFAULT_SPEECH_MS, MAX_SPEECH_MS)

    def narration(streaming: bool) -> Narration:
        return synth.narration(
            anchor=[synth.voice_reference(voice, True)],
            sampling=synth.sampling(body.temperature, body.top_k, body.seed),
            budget_ms=budget_ms,
            request_id=request_id_of(request),
            capped=script.utterances > 1,
            streaming=streaming,
        )

    output, speaker = body.output, voice.info.speaker
    if body.stream_format == "sse":
        stream = await synth.speech_stream(narration(True), script.lines, speaker)
        return sse_response(stream, output, len(body.input), body.speed)

    key = await svc.cache_key(
        "openai_speech",
        body,
        text=script_key(script),
        max_ms=budget_ms,
        voice=voice.info.model_dump(),
    )
    if key is None and output.streams_as_file:  # nothing to cache: stream, as OpenAI does
        stream = await synth.speech_stream(narration(True), script.lines, speaker)
        return streaming_response(stream, output, {}, body.speed)

    async def produce():
        audio = await synth.speech_audio(narration(False), script.lines, speaker)
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
