"""The original design's single-utterance endpoints: /speak, /clone_voice, /batch_speak."""

from __future__ import annotations

import asyncio
import base64

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from serve_app.api.auth import key_of
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
from serve_app.api.schemas import MAX_SPEECH_MS, BatchSpeakRequest, CloneVoiceRequest, SpeakRequest
from serve_app.api.synthesis import INLINE_PLAN_CHARS, run_sized
from serve_app.audio.encode import encode_audio
from serve_app.audio.tempo import change_speed
from serve_app.engine.types import GenerationRequest

router = APIRouter(tags=["speech"])

DEFAULT_SPEAK_MS = 10_000


@router.post("/speak", responses=AUDIO_RESPONSES, response_class=Response)
async def speak(body: SpeakRequest, request: Request, svc: ServicesDep) -> Response:
    """Speech for `text` (long texts segment by segment), optionally continuing `context` turns or in a
    built-in or saved `voice`."""
    synth = svc.synth
    script = await synth.script(body.text, normalize=body.normalize, lexicon=body.lexicon)
    voice = await synth.named_voice(body.voice, key_of(request.scope)) if body.voice else None
    speaker = voice.info.speaker if voice else body.speaker
    budget_ms = body.max_duration_ms or script.default_budget_ms(DEFAULT_SPEAK_MS, MAX_SPEECH_MS)
    filename = f"speech.{body.output.extension}"

    async def narration(streaming: bool) -> Narration:
        context = await synth.context(body.context, body.normalize)
        if voice:
            context.append(synth.voice_reference(voice, body.normalize))
        narration = synth.narration(
            anchor=context,
            sampling=synth.sampling(body.temperature, body.top_k, body.seed),
            budget_ms=budget_ms,
            request_id=request_id_of(request),
            capped=script.utterances > 1,
            streaming=streaming,
            quality_check=body.quality_check,
        )
        if script.utterances > 1:
            await narration.encode_anchor()
        return narration

    if body.stream:
        stream = await synth.speech_stream(await narration(True), script.lines, speaker)
        if body.stream_format == "sse":
            return sse_response(stream, body.output, len(body.text), body.speed)
        return streaming_response(
            stream,
            body.output,
            {"Content-Disposition": f'attachment; filename="{filename}"'},
            body.speed,
        )

    async def produce():
        audio = await synth.speech_audio(await narration(False), script.lines, speaker)
        return await encode_response(audio.pcm, body.output, audio_headers(audio, filename), body.speed)

    key = await svc.cache_key(
        "speak",
        body,
        text=script_key(script),
        speaker=speaker,
        max_ms=budget_ms,
        quality=body.quality_check,
        normalize=body.normalize,  # the context's and the voice's transcripts are normalized too
        context=[(c.text, c.speaker, c.audio_b64) for c in body.context] if body.context else None,
        voice=voice.info.model_dump() if voice else None,
    )
    return await cached_response(svc.cache, key, produce)


@router.post("/clone_voice", responses=AUDIO_RESPONSES, response_class=Response)
async def clone_voice(body: CloneVoiceRequest, request: Request, svc: ServicesDep) -> Response:
    """Speech for `text` in the voice of a reference recording (inline or a saved voice)."""
    synth = svc.synth
    text = synth.target_text(body.text, body.normalize)
    voice = await synth.named_voice(body.voice, key_of(request.scope)) if body.voice else None
    filename = f"cloned_voice.{body.output.extension}"

    async def produce():
        if voice:
            reference = synth.voice_reference(voice, body.normalize)
        else:  # speaker 0 as in the original design
            reference = await synth.segment(
                body.reference_text,
                0,
                body.reference_audio_b64,
                body.normalize,
                "reference_text",
                "reference_audio_b64",
                reference=True,
            )
        audio = await synth.generate(
            GenerationRequest(
                text=text,
                speaker=reference.speaker,
                context=[reference],
                max_audio_length_ms=body.max_duration_ms,
                sampling=synth.sampling(body.temperature, body.top_k, body.seed),
                request_id=request_id_of(request),
            )
        )
        return await encode_response(audio.pcm, body.output, audio_headers(audio, filename), body.speed)

    key = await svc.cache_key(
        "clone_voice",
        body,
        text=text,
        max_ms=body.max_duration_ms,
        normalize=body.normalize,  # the reference's transcript is normalized too
        reference=(body.reference_text, body.reference_audio_b64) if not voice else None,
        voice=voice.info.model_dump() if voice else None,
    )
    return await cached_response(svc.cache, key, produce)


@router.post("/batch_speak", response_model=list[str])
async def batch_speak(body: BatchSpeakRequest, request: Request, svc: ServicesDep) -> Response:
    """Base64 WAVs in input order; all texts go to the engine at once so it can batch them."""
    synth = svc.synth
    limit = svc.settings.max_batch_texts
    if len(body.texts) > limit:
        raise ApiError(413, f"texts has {len(body.texts)} items, over the {limit}-item limit")

    def checked() -> list[str]:
        return [synth.target_text(t, body.normalize, f"texts[{i}]") for i, t in enumerate(body.texts)]

    # Ten texts near the limit take tens of ms to normalize: as for /speak, only short ones on the loop.
    texts = await run_sized(checked, heavy=sum(map(len, body.texts)) > INLINE_PLAN_CHARS)
    requests = [
        GenerationRequest(
            text=text,
            speaker=body.speaker,
            max_audio_length_ms=body.max_duration_per_text_ms,
            sampling=synth.sampling(body.temperature, body.top_k, body.seed),
            request_id=f"{request_id_of(request)}-{i}",
        )
        for i, text in enumerate(texts)
    ]
    tasks = [asyncio.ensure_future(synth.generate(r)) for r in requests]
    try:
        audios = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # one failed: do not leave the others generating for nobody
            task.cancel()
        raise

    def encode_all() -> JSONResponse:
        # Rendered here too: tens of MB of base64 serialized on the event loop would stall every stream.
        return JSONResponse(
            [
                base64.b64encode(encode_audio(change_speed(a.pcm, body.speed), body.output)).decode()
                for a in audios
            ]
        )

    return await run_in_threadpool(encode_all)
