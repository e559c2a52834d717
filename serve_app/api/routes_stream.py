"""`/v1/audio/speech/stream`: a WebSocket taking text as it is written and answering with speech.

The protocol is described in `serve_app.api.stream_messages`; the work in `serve_app.api.stream_session`.
Authentication is the HTTP API's (`AuthMiddleware`): `Authorization: Bearer <key>` on the handshake, or,
for browsers (which cannot set headers on a WebSocket), `?api_key=<key>` in the URL.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, WebSocket

from serve_app.api.stream_session import StreamSession

router = APIRouter(tags=["streaming"])


@router.websocket("/v1/audio/speech/stream")
async def speech_stream(websocket: WebSocket) -> None:
    await websocket.accept()
    synth = websocket.app.state.services.synth
    # The socket's request id (its access-log line's) names its contexts' engine requests too.
    request_id = getattr(websocket.state, "request_id", None) or f"ws-{uuid.uuid4().hex[:12]}"
    await StreamSession(websocket, synth, request_id).run()
