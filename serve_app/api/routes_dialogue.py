"""Multi-turn speech: /conversation (one request, many turns) and /contextual_speak (server-side sessions).

Earlier turns become context as their text plus the codes the engine generated for them: generated
audio is never decoded and re-encoded to be used as context.
"""

from __future__ import annotations

import re
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Request, Response

from serve_app.api.auth import key_of
from serve_app.api.cache import CachedResponse
from serve_app.api.deps import ServicesDep
from serve_app.api.errors import ApiError, request_id_of
from serve_app.api.longform import script_key
from serve_app.api.responses import AUDIO_RESPONSES, audio_headers, cached_response, encode_response
from serve_app.api.schemas import (
    MAX_SPEECH_MS,
    SESSION_ID_PATTERN,
    ContextualSpeakRequest,
    ConversationRequest,
)
from serve_app.api.sessions import session_turn
from serve_app.api.synthesis import join_pcm
from serve_app.engine.types import FRAME_MS, SAMPLE_RATE, FinishReason, GenerationRequest, Segment

router = APIRouter(tags=["dialogue"])

DEFAULT_CONVERSATION_MS = 30_000
"""The original design's default length of a conversation: the least a default limit allows."""


@router.post("/conversation", responses=AUDIO_RESPONSES, response_class=Response)
async def conversation(body: ConversationRequest, request: Request, svc: ServicesDep) -> Response:
    """All turns in one file; each turn is generated with the earlier turns as context (a long turn
    segment by segment, each segment hearing the ones before it).

    The speech budget (`max_total_duration_ms` minus the pauses) is shared out as it is used: each
    turn may take its share of the remaining budget, in proportion to its text's need among the
    turns still to come (`Script.need_ms`), so a long turn gets more, and a turn that ends early
    leaves its rest to the later ones.
    """
    synth = svc.synth
    limit = svc.settings.max_conversation_turns
    if len(body.turns) > limit:
        raise ApiError(413, f"turns has {len(body.turns)} items, over the {limit}-turn limit")
    scripts = [
        await synth.script(t.text, normalize=body.normalize, lexicon=body.lexicon, field=f"turns[{i}].text")
        for i, t in enumerate(body.turns)
    ]
    pauses = [t.pause_ms if i < len(body.turns) - 1 else 0 for i, t in enumerate(body.turns)]
    # Each turn's need (`Script.need_ms`); without a limit given, every need and the pauses (at least
    # the original design's 30 s), so no text is dropped unasked.
    needs = [script.need_ms for script in scripts]
    total_ms = body.max_total_duration_ms or min(MAX_SPEECH_MS, max(DEFAULT_CONVERSATION_MS, sum(needs) + sum(pauses)))
    budget_ms = total_ms - sum(pauses)
    if budget_ms < FRAME_MS * len(body.turns):
        raise ApiError(
            422,
            f"the pauses ({sum(pauses)} ms) leave no time for speech within max_total_duration_ms={total_ms}",
        )

    async def produce() -> CachedResponse:
        narration = synth.narration(
            sampling=synth.sampling(body.temperature, body.top_k, body.seed),
            budget_ms=total_ms,
            request_id=request_id_of(request),
            streaming=False,
            context_segments=None,  # every earlier turn that fits
        )
        remaining_ms = budget_ms
        pieces: list[np.ndarray] = []
        for i, (turn, script) in enumerate(zip(body.turns, scripts)):
            turn_ms = max(FRAME_MS, remaining_ms * needs[i] // max(1, sum(needs[i:])))
            before = narration.emitted
            pieces += [
                piece.pcm
                async for piece in narration.run(
                    script.lines, turn.speaker, limit_ms=turn_ms, capped=script.utterances > 1,
                    pause_after=pauses[i] > 0,  # the pause asked for is the whole silence between turns
                )
            ]
            remaining_ms -= (narration.emitted - before) * 1000 // SAMPLE_RATE
            if pauses[i] and (pause := narration.pause(pauses[i])) is not None:
                pieces.append(pause.pcm)
        headers = {
            "Content-Disposition": f'attachment; filename="conversation.{body.output.extension}"',
            "X-Context-Dropped-Turns": str(narration.dropped_context_turns),
            "X-Finish-Reason": (narration.finish_reason or FinishReason.END_OF_AUDIO).value,
        }
        return await encode_response(await join_pcm(pieces), body.output, headers, body.speed)

    key = await svc.cache_key(
        "conversation",
        body,
        turns=[(script_key(script), t.speaker, pause) for script, t, pause in zip(scripts, body.turns, pauses)],
        max_total_ms=total_ms,
    )
    return await cached_response(svc.cache, key, produce)


@router.post("/contextual_speak", responses=AUDIO_RESPONSES, response_class=Response)
async def contextual_speak(body: ContextualSpeakRequest, request: Request, svc: ServicesDep) -> Response:
    """Speech that continues a session: its last N turns (text + codes) are the context.

    Sessions live in the store every ingress replica shares, so any replica may serve any turn.
    Requests to one session are served one at a time (each sees the turns before it).
    """
    synth = svc.synth
    text = synth.target_text(body.text, body.normalize)
    session_id = body.session_id or default_session_id(request)
    voice = await synth.named_voice(body.voice, key_of(request.scope)) if body.voice else None
    # A voice's reference comes last, as on /speak: the nearest context, and the last to be dropped
    # when a long session no longer fits the prompt.
    anchor = [synth.voice_reference(voice, body.normalize)] if voice else []
    speaker = voice.info.speaker if voice else body.speaker
    async with session_turn(svc.sessions, stored_session_id(request, session_id)) as turn:
        audio = await synth.generate(
            GenerationRequest(
                text=text,
                speaker=speaker,
                context=[*turn.context, *anchor],
                max_audio_length_ms=body.max_duration_ms,
                sampling=synth.sampling(body.temperature, body.top_k, body.seed),
                request_id=request_id_of(request),
            )
        )
        turn.record(Segment(text=text, speaker=speaker, codes=audio.codes))
    headers = {
        **audio_headers(audio, f"speech.{body.output.extension}"),
        "X-Session-Turns": str(turn.turns_kept),
        "X-Session-ID": session_id,
    }
    return await cached_response(
        svc.cache, None, lambda: encode_response(audio.pcm, body.output, headers, body.speed)
    )


def default_session_id(request: Request) -> str:
    """The session of a turn that names none: the caller's own (its API key's fingerprint, or its
    address), never one shared by every caller."""
    client = request.scope.get("state", {}).get("client_id") or (
        f"addr_{request.client.host}" if request.client else "anonymous"
    )
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", f"default-{client}")[:128]


def stored_session_id(request: Request, session_id: str) -> str:
    """The id a session is stored under: where the server takes API keys, filed under the caller's
    key (as saved voices are), so a caller reads, extends and resets only its own sessions whatever
    ids another key's callers choose."""
    owner = key_of(request.scope)
    return session_id if owner is None else f"{owner}/{session_id}"


@router.delete("/sessions/{session_id}", status_code=204, response_class=Response)
async def reset_session(
    session_id: Annotated[str, Path(max_length=128, pattern=SESSION_ID_PATTERN)],
    request: Request,
    svc: ServicesDep,
) -> Response:
    """Forget a session's turns (idempotent: an unknown session is already reset); an id no turn
    could have used is a 422, as it is for the turns."""
    await svc.sessions.reset(stored_session_id(request, session_id))
    return Response(status_code=204)
