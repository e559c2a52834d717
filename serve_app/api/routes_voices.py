"""Saved voices: a reference recording stored once as Mimi codes, then used by id.

`POST /v1/voices` takes the recording either as base64 in JSON or as a file in multipart/form-data
(what HTML forms, `curl -F` and recording tools send). `POST /v1/voices/{id}/preview` speaks a sample
sentence in a voice, so a new voice can be heard before it is used.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from serve_app.api.auth import key_of
from serve_app.api.deps import ServicesDep
from serve_app.api.errors import ApiError
from serve_app.api.responses import AUDIO_RESPONSES
from serve_app.api.routes_speech import speak
from serve_app.api.schemas import (
    SpeakRequest,
    VoiceCreateRequest,
    VoiceFields,
    VoiceInfo,
    VoiceList,
    VoicePreviewRequest,
)

router = APIRouter(prefix="/v1/voices", tags=["voices"])

AUDIO_FILE_FIELDS = ("audio", "file", "reference_audio")
"""Form field names accepted for the recording (ours, then the names other TTS servers use)."""

_FORM_SCHEMA = {
    "type": "object",
    "required": ["name", "transcript", "audio"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "transcript": {"type": "string", "minLength": 1, "description": "What the recording says."},
        "speaker": {"type": "integer", "enum": [0, 1], "default": 0},
        "audio": {"type": "string", "format": "binary", "description": "WAV/FLAC/OGG/MP3/M4A/WebM file."},
    },
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": VoiceCreateRequest.model_json_schema(by_alias=False)},
            "multipart/form-data": {"schema": _FORM_SCHEMA},
        },
    }
}


def _invalid(errors: list[Any]) -> RequestValidationError:
    """A 422 like FastAPI's own, with locations under `body`."""
    return RequestValidationError([{**e, "loc": ("body", *e.get("loc", ()))} for e in errors])


async def _json_upload(request: Request) -> tuple[VoiceFields, str, str]:
    try:
        body = VoiceCreateRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise _invalid(exc.errors()) from None
    return body, body.audio_b64, "audio_b64"


async def _form_upload(request: Request, max_bytes: int) -> tuple[VoiceFields, bytes, str]:
    async with request.form(max_files=1, max_fields=16) as form:
        text_fields = {k: v for k, v in form.multi_items() if isinstance(v, str) and k not in AUDIO_FILE_FIELDS}
        try:
            fields = VoiceFields.model_validate(text_fields)
        except ValidationError as exc:
            raise _invalid(exc.errors()) from None
        for name in AUDIO_FILE_FIELDS:
            upload = form.get(name)
            if isinstance(upload, UploadFile):
                return fields, await upload.read(max_bytes + 1), name  # one byte over says "too large"
    raise _invalid(
        [{"type": "missing", "loc": ("audio",), "msg": "an audio file is required (form field 'audio')"}]
    )


@router.post("", response_model=VoiceInfo, status_code=201, openapi_extra=_UPLOAD_BODY)
async def create_voice(request: Request, svc: ServicesDep) -> VoiceInfo:
    """Encode the reference audio to codes once and keep them with the transcript."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        fields, audio, field = await _form_upload(request, svc.settings.max_audio_bytes)
    elif media_type in ("", "application/json"):
        fields, audio, field = await _json_upload(request)
    else:
        raise ApiError(415, f"send the voice as application/json or multipart/form-data, not {media_type}")
    if svc.synth.builtin.spec(fields.name) is not None:  # a request naming it would get the built-in
        raise ApiError(409, f"{fields.name!r} is a built-in voice's name (GET /v1/audio/voices): choose another")
    svc.synth.text(fields.transcript, normalize=False, field="transcript")  # length check only
    voices = svc.synth.voices.owned_by(key_of(request.scope))
    limit = svc.settings.max_saved_voices
    if len(await run_in_threadpool(voices.list)) >= limit:
        raise ApiError(409, f"{limit} voices are saved, the most this server keeps: delete one first")
    codes = await svc.synth.encode_reference(audio, field)
    if len(codes) == 0:
        raise ApiError(400, f"{field} is too short to hold one audio frame (80 ms)")
    return await run_in_threadpool(voices.create, fields.name, fields.transcript, fields.speaker, codes)


@router.get("", response_model=VoiceList)
async def list_voices(request: Request, svc: ServicesDep) -> VoiceList:
    """The voices saved with the caller's API key (every saved voice where the server takes none)."""
    return VoiceList(data=await run_in_threadpool(svc.synth.voices.owned_by(key_of(request.scope)).list))


@router.get("/{voice_id}", response_model=VoiceInfo)
async def get_voice(voice_id: str, request: Request, svc: ServicesDep) -> VoiceInfo:
    return (await svc.synth.voice(voice_id, key_of(request.scope))).info


@router.post("/{voice_id}/preview", responses=AUDIO_RESPONSES, response_class=Response)
async def preview_voice(
    voice_id: str,
    request: Request,
    svc: ServicesDep,
    body: Annotated[VoicePreviewRequest | None, Body()] = None,
) -> Response:
    """A sample sentence (or `text`) in the voice: `/speak` with this voice, whole, not streamed."""
    voice = await svc.synth.voice(voice_id, key_of(request.scope))  # 404 before anything else
    options = (body or VoicePreviewRequest()).model_dump(exclude_unset=True)
    options.setdefault("text", VoicePreviewRequest.model_fields["text"].default)
    return await speak(SpeakRequest(**options, voice=voice.info.id), request, svc)


@router.delete("/{voice_id}", status_code=204, response_class=Response)
async def delete_voice(voice_id: str, request: Request, svc: ServicesDep) -> Response:
    voices = svc.synth.voices.owned_by(key_of(request.scope))
    # the id as every lookup takes it (edge spaces aside): what GET finds, DELETE deletes
    if not await run_in_threadpool(voices.delete, voice_id.strip()):
        raise ApiError(404, f"voice {voice_id!r} not found")
    return Response(status_code=204)
