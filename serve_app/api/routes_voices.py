"""Saved voices: a reference recording stored once as Mimi codes, then used by id."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from serve_app.api.deps import ServicesDep
from serve_app.api.errors import ApiError
from serve_app.api.schemas import VoiceCreateRequest, VoiceInfo, VoiceList

router = APIRouter(prefix="/v1/voices", tags=["voices"])


@router.post("", response_model=VoiceInfo, status_code=201)
async def create_voice(body: VoiceCreateRequest, svc: ServicesDep) -> VoiceInfo:
    """Encode the reference audio to codes once and keep them with the transcript."""
    svc.synth.text(body.transcript, normalize=False, field="transcript")  # length check only
    codes = await svc.synth.encode_reference(body.audio_b64, "audio_b64")
    if len(codes) == 0:
        raise ApiError(400, "audio_b64 is too short to hold one audio frame (80 ms)")
    return await run_in_threadpool(svc.synth.voices.create, body.name, body.transcript, body.speaker, codes)


@router.get("", response_model=VoiceList)
async def list_voices(svc: ServicesDep) -> VoiceList:
    return VoiceList(data=await run_in_threadpool(svc.synth.voices.list))


@router.get("/{voice_id}", response_model=VoiceInfo)
async def get_voice(voice_id: str, svc: ServicesDep) -> VoiceInfo:
    return (await svc.synth.voice(voice_id)).info


@router.delete("/{voice_id}", status_code=204, response_class=Response)
async def delete_voice(voice_id: str, svc: ServicesDep) -> Response:
    if not await run_in_threadpool(svc.synth.voices.delete, voice_id):
        raise ApiError(404, f"voice {voice_id!r} not found")
    return Response(status_code=204)
