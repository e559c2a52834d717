"""Operational endpoints: /health for load balancers and Ray, /info for clients."""

from __future__ import annotations

import asyncio
import os

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve_app.api.deps import ServicesDep
from serve_app.api.errors import engine_errors
from serve_app.engine.types import FRAME_MS, NUM_CODEBOOKS, SAMPLE_RATE

router = APIRouter(tags=["system"])

RANDOM_WEIGHTS_NOTICE = "{model} has random weights, for development: its audio is noise, not speech"


@router.api_route("/health", methods=["GET", "HEAD"])  # load balancers probe with either
async def health(svc: ServicesDep) -> JSONResponse:
    """200 once the engine's own health check passes, 503 (with Retry-After) until then."""
    try:
        await asyncio.wait_for(svc.synth.engine.check_health(), svc.settings.health_timeout_s)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; the reason is reported
        reason = str(exc) or type(exc).__name__
        return JSONResponse(
            {"status": "unavailable", "detail": f"engine not ready: {reason}"},
            status_code=503,
            headers={"Retry-After": str(svc.settings.retry_after_s)},
        )
    return JSONResponse({"status": "ok"})


@router.get("/info")
async def info(svc: ServicesDep) -> dict:
    """Model, revision, audio format and the request limits of this deployment."""
    model = await svc.synth.model()
    async with engine_errors(svc.settings.retry_after_s):
        engine_info = await svc.synth.engine.info()
    random_weights = engine_info.get("format") == "random"
    return {
        "model": model["name"],
        "revision": model["revision"],
        "random_weights": random_weights,
        **({"notice": RANDOM_WEIGHTS_NOTICE.format(model=model["name"])} if random_weights else {}),
        "sample_rate": SAMPLE_RATE,
        "frame_ms": FRAME_MS,
        "num_codebooks": NUM_CODEBOOKS,
        "speakers": [0, 1],
        "limits": svc.settings.limits(),
        "engine": engine_info,
        # this ingress replica, and the built-in voices it has prepared (fingerprints of their prompts)
        "ingress": {"pid": os.getpid(), "voices": svc.synth.builtin.prepared()},
    }
