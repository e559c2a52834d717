"""`GET /v1/audio/voices`: every voice a request may name, built-in and saved (with the caller's key)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from serve_app.api.auth import key_of
from serve_app.api.builtin_voices import fingerprint
from serve_app.api.deps import ServicesDep

router = APIRouter(prefix="/v1/audio", tags=["voices"])


class VoiceEntry(BaseModel):
    id: str = Field(description="What `voice` takes: a built-in name or a saved voice id.")
    name: str
    type: Literal["builtin", "saved"]
    speaker: int
    source: Literal["clip", "seeded", "upload"] = Field(
        description="Where the reference prompt comes from: a shipped clip, an anchor utterance "
        "generated once with the voice's seed, or a recording saved through /v1/voices."
    )
    description: str = ""
    ready: bool = Field(description="Its reference prompt exists (else it is made on first use).")
    fingerprint: str | None = Field(
        None, description="Digest of the reference prompt (codes and transcript): equal on every replica."
    )
    duration_ms: int | None = None


class VoiceCatalog(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceEntry]


@router.get("/voices", response_model=VoiceCatalog)
async def list_all_voices(request: Request, svc: ServicesDep) -> VoiceCatalog:
    synth = svc.synth
    saved_voices = synth.voices.owned_by(key_of(request.scope))
    entries = []
    for spec in synth.builtin.specs.values():
        voice = await synth.builtin.stored(spec, synth)
        entries.append(
            VoiceEntry(
                id=spec.name,
                name=spec.name,
                type="builtin",
                speaker=spec.speaker,
                source="clip" if spec.clip is not None else "seeded",
                description=spec.description,
                ready=voice is not None,
                fingerprint=fingerprint(voice) if voice is not None else None,
                duration_ms=voice.info.duration_ms if voice is not None else None,
            )
        )

    def saved() -> list[VoiceEntry]:  # up to max_saved_voices (10 000): tens of ms, off the event loop
        return [
            VoiceEntry(
                id=info.id,
                name=info.name,
                type="saved",
                speaker=info.speaker,
                source="upload",
                ready=True,
                duration_ms=info.duration_ms,
            )
            for info in saved_voices.list()
        ]

    return VoiceCatalog(data=entries + await run_in_threadpool(saved))
