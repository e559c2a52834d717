"""Ray Serve graph: a CPU FastAPI ingress in front of autoscaled GPU replicas of the speech engine.

    HTTP ─► APIIngress (FastAPI from `create_app`, CPU) ─handle─► TTSModel (Engine, num_gpus=1)

`build_app(args)` is the application builder named by every Serve config
(`import_path: serve_app.deployments:build_app`). The decorators below hold safe defaults only;
sizing (replicas, autoscaling, GPUs, queue limits) is set per environment in `serve_config.yaml`
and `configs/serve/local.yaml`, whose `deployments:` entries override them.

Batching: the engine batches concurrent requests itself (continuous batching over slots), so the
model deployment passes every call straight through (no `@serve.batch`) and its
`max_ongoing_requests` is sized to the engine's slots. Requests beyond `max_ongoing_requests` wait
in Ray's per-handle queue; beyond `max_queued_requests` Ray rejects them and the ingress answers 503
with Retry-After.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from serve_app.deploy.args import BuildArgs
from serve_app.deploy.handle_engine import HandleEngine
from serve_app.engine.types import Audio, AudioChunk, GenerationRequest

if TYPE_CHECKING:
    from fastapi import FastAPI

    from serve_app.engine.interface import SpeechEngine

logger = logging.getLogger("serve_app.deployments")

MODEL_DEPLOYMENT = "TTSModel"
INGRESS_DEPLOYMENT = "APIIngress"


@serve.deployment(
    name=MODEL_DEPLOYMENT,
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=16,
    max_queued_requests=64,
    backpressure_config={"retry_after_s": 1},
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_wait_loop_s=1,
    graceful_shutdown_timeout_s=30,
)
class TTSModel:
    """One speech engine per replica (one GPU in production); a thin pass-through to it."""

    def __init__(self, model: str = "tiny-random", engine_kwargs: dict[str, Any] | None = None) -> None:
        # Imported here, in the replica, so building the graph on the controller never needs torch.
        from serve_app.engine.engine import Engine, lower_switch_interval
        from serve_app.observability.metrics import record_engine_step

        lower_switch_interval()  # this process hosts the engine's loop thread
        self._engine: SpeechEngine = Engine.from_preset(
            model, on_step=record_engine_step, **(engine_kwargs or {})
        )
        logger.info("TTSModel replica ready: preset=%s pid=%d", model, os.getpid())

    async def generate(self, request: GenerationRequest) -> Audio:
        return await self._engine.generate(request)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[AudioChunk]:
        """Streaming method (`handle.options(stream=True)`); cancelling it stops the engine's stream."""
        chunks = self._engine.stream(request)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def encode_audio(self, pcm: np.ndarray) -> np.ndarray:
        return await self._engine.encode_audio(pcm)

    async def info(self) -> dict[str, Any]:
        """The engine's info plus which replica answered (id and pid, for operators and tests)."""
        info = dict(await self._engine.info())
        info["replica"] = {"id": _replica_id(), "pid": os.getpid()}
        return info

    async def check_health(self) -> None:
        """Ray's periodic health hook and the API's /health both land here: a broken engine
        fails the replica's health check, and Ray replaces the replica."""
        await self._engine.check_health()

    def __del__(self) -> None:
        """Called by Ray after draining (graceful shutdown): stop the engine's loop thread."""
        close = getattr(getattr(self, "_engine", None), "close", None)
        if callable(close):
            close()


@serve.deployment(
    name=INGRESS_DEPLOYMENT,
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=256,
    graceful_shutdown_wait_loop_s=1,
    graceful_shutdown_timeout_s=30,
)
@serve.ingress()
class APIIngress:
    """HTTP entry point: the API layer's FastAPI app, talking to `TTSModel` through a handle."""

    def __init__(self, model: DeploymentHandle, api_settings: dict[str, Any] | None = None) -> None:
        self._engine = HandleEngine(model)
        self._api_settings = dict(api_settings or {})

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Built on the replica after `__init__`, so the app can hold the handle-backed engine."""
        from serve_app.api.app import create_app

        return create_app(self._engine, _api_settings(self._api_settings))


def build_app(args: dict[str, Any] | BuildArgs | None = None) -> Application:
    """Application builder: `args` as in a Serve config's `args:` (see `BuildArgs`)."""
    parsed = args if isinstance(args, BuildArgs) else BuildArgs.model_validate(args or {})
    _api_settings(parsed.api)  # fail at build time on bad API settings, not in every replica
    model = TTSModel
    max_ongoing = parsed.model_max_ongoing_requests()
    if max_ongoing is not None:
        model = model.options(max_ongoing_requests=max_ongoing)
    return APIIngress.bind(model.bind(parsed.model, parsed.engine_kwargs()), parsed.api)


def _api_settings(values: dict[str, Any]) -> Any:
    """`ApiSettings` from the builder's `api:` args (None keeps the API's defaults and CSM_* env)."""
    if not values:
        return None
    from serve_app.api.settings import ApiSettings

    return ApiSettings(**values)


def _replica_id() -> str | None:
    with contextlib.suppress(Exception):
        return serve.get_replica_context().replica_id.unique_id
    return None
