"""`create_app(engine)`: the HTTP API over any `SpeechEngine` (in-process engine or Ray handle adapter).

Besides the API routes it carries the service's observability (request ids, Prometheus metrics and
`GET /metrics`, the JSON access log, engine metrics through `MeteredEngine`) and the browser
playground (`GET /`). This is the one place the app is wired.
"""

from __future__ import annotations

from fastapi import FastAPI

import serve_app
from serve_app.api import (
    openai_compat,
    routes_dialogue,
    routes_speech,
    routes_stream,
    routes_system,
    routes_voice_catalog,
    routes_voices,
)
from serve_app.api.auth import ApiKeyRing, AuthMiddleware
from serve_app.api.cache import ResponseCache
from serve_app.api.deps import Services
from serve_app.api.errors import install_error_handlers
from serve_app.api.middleware import (
    BodyLimitMiddleware,
    CancelOnDisconnectMiddleware,
    UnexpectedErrorMiddleware,
)
from serve_app.api.settings import ApiSettings
from serve_app.api.state import StateBackends, local_backends
from serve_app.api.synthesis import Synthesizer
from serve_app.api.voices import VoiceStore
from serve_app.engine.interface import SpeechEngine
from serve_app.observability.http import instrument_app
from serve_app.observability.metered_engine import MeteredEngine
from serve_app.web.routes import install_playground

__all__ = ["create_app"]


def create_app(
    engine: SpeechEngine,
    settings: ApiSettings | None = None,
    state: StateBackends | None = None,
    *,
    request_id_header: bool = True,
) -> FastAPI:
    """Build the app; `settings` defaults to `ApiSettings()` (environment variables `CSM_*`), `state`
    (sessions, rate limits) to this process's memory, or Redis when `redis_url` is set.
    `request_id_header=False` behind Ray Serve's HTTP servers, which answer with `X-Request-ID`
    themselves."""
    settings = settings or ApiSettings()
    state = state or local_backends(settings)
    app = FastAPI(
        title="csm-serve",
        version=serve_app.__version__,
        description="Text-to-speech with Sesame's CSM-1B.",
    )
    app.state.services = Services(
        settings=settings,
        synth=Synthesizer(MeteredEngine(engine), settings, VoiceStore(settings.voices_dir)),
        cache=ResponseCache(settings.cache_max_bytes),
        sessions=state.sessions,
    )
    install_error_handlers(app)
    app.add_middleware(CancelOnDisconnectMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    keys = settings.load_api_keys()
    if keys or state.limiter is not None:
        # Outside the body limit: an unknown or throttled client is answered before its body is read.
        app.add_middleware(AuthMiddleware, keys=ApiKeyRing(keys) if keys else None, limiter=state.limiter)
    app.add_middleware(UnexpectedErrorMiddleware)  # inside the request id: a 500 logged once, with its id
    for module in (
        routes_speech,
        routes_stream,
        routes_dialogue,
        routes_voices,
        routes_voice_catalog,
        openai_compat,
        routes_system,
    ):
        app.include_router(module.router)
    instrument_app(app, request_id_header)  # outermost: request ids (a 401, 413 or 429 carries one too), metrics, access log
    install_playground(app)  # GET / and /playground
    return app
