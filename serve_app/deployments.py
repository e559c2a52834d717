"""Ray Serve graph: a CPU FastAPI ingress in front of autoscaled GPU replicas of the speech engine.

    HTTP ─► APIIngress (FastAPI from `create_app`, CPU) ─handle─► TTSModel (Engine, num_gpus=1)
                 └─handle─► SharedState (sessions and rate-limit buckets, one replica)

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
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from serve_app.api.auth import TokenBucketLimiter
from serve_app.deploy.args import BuildArgs
from serve_app.deploy.handle_engine import HandleEngine, serve_deployment_health
from serve_app.deploy.names import INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT, STATE_DEPLOYMENT
from serve_app.engine.types import Audio, AudioChunk, GenerationRequest
from serve_app.observability.stall_watchdog import LoopStallWatchdog

if TYPE_CHECKING:
    from fastapi import FastAPI

    from serve_app.engine.interface import SpeechEngine

logger = logging.getLogger("serve_app.deployments")

LOG_LEVEL_ENV = "CSM_LOG_LEVEL"
"""Level of the JSON logs a replica writes (default INFO: one line per HTTP request)."""


def _log_as_json() -> Callable[[], None]:
    """Ray leaves a replica's root logger bare (WARNING, no handler), so the app's JSON lines (one
    per request) and the engine's would go nowhere: send them to the replica's stderr, which Ray
    writes to the replica's log file and `serve run` prints. Returns the same set-up as a picklable
    call, for the engine's child process (whose stderr is the replica's)."""
    from serve_app.observability.logs import configure_logging

    setup = functools.partial(configure_logging, os.environ.get(LOG_LEVEL_ENV, "INFO").upper())
    setup()
    return setup


MODEL_ROUTING_BACKOFF_S = 0.02
"""How long a router waits before trying a full model replica again (Ray's default backs off from
25 ms to 0.5 s). A handle routes through at most two tasks per replica, and a task that found the
replica full sleeps its backoff: when a full replica's streams ended together, the requests queued
in Ray drained at four to eight a second (one per task per backoff) behind two ingress replicas while the
replica's slots stood empty (a 600-request flood through Ray Serve on an H200, ~23 s; the same on a
CPU with a stand-in deployment, `benchmarks/bench_ray_routing.py`). At 20 ms they drain at the pace the slots
free; the cost is a queue-length probe per task every 20 ms while the replica stays full."""


@serve.deployment(
    name=MODEL_DEPLOYMENT,
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=16,
    max_queued_requests=64,
    backpressure_config={"retry_after_s": 1},
    request_router_config={"initial_backoff_s": MODEL_ROUTING_BACKOFF_S, "max_backoff_s": MODEL_ROUTING_BACKOFF_S},
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_wait_loop_s=1,
    graceful_shutdown_timeout_s=30,
)
class TTSModel:
    """One speech engine per replica (one GPU in production); a thin pass-through to it."""

    def __init__(
        self, model: str = "tiny-random", engine_kwargs: dict[str, Any] | None = None, engine_process: bool = True
    ) -> None:
        """`engine_process`: run the engine in a child process (`ProcessEngine`), whose GIL the
        replica's event loop does not share; else in this process."""
        # Imported here, in the replica, so building the graph on the controller never needs torch.
        from serve_app.observability.metrics import record_engine_step

        log_setup = _log_as_json()
        if engine_process:
            from serve_app.engine.process import ProcessEngine

            self._engine: SpeechEngine = ProcessEngine(
                model, engine_kwargs, on_step=record_engine_step, child_setup=log_setup
            )
        else:
            from serve_app.engine.engine import Engine, lower_switch_interval

            lower_switch_interval()  # this process hosts the engine's loop thread
            self._engine = Engine.from_preset(model, on_step=record_engine_step, **(engine_kwargs or {}))
        self._watchdog = LoopStallWatchdog()
        logger.info("TTSModel replica ready: preset=%s pid=%d engine_process=%s", model, os.getpid(), engine_process)

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
        fails the replica's health check, and Ray replaces the replica. The first check starts the
        event-loop stall watchdog (it needs the replica's running loop)."""
        self._watchdog.start()
        await self._engine.check_health()

    def __del__(self) -> None:
        """Called by Ray after draining (graceful shutdown): stop the engine's loop thread."""
        close = getattr(getattr(self, "_engine", None), "close", None)
        if callable(close):
            close()


@serve.deployment(
    name=STATE_DEPLOYMENT,
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=4096,
    graceful_shutdown_wait_loop_s=1,
    graceful_shutdown_timeout_s=5,
    # Every ingress replica reports its requests in flight about once a second: no access-log line each.
    logging_config={"enable_access_log": False},
)
class SharedState:
    """The /contextual_speak sessions and rate-limit buckets of every ingress replica, in memory.

    Exactly one replica (two would split the state): it outlives any ingress replica, and when it
    is itself replaced, sessions and buckets start empty. Turns waiting for their session hold a
    request slot here, hence the high `max_ongoing_requests`."""

    def __init__(self, api_settings: dict[str, Any] | None = None) -> None:
        from serve_app.api.settings import ApiSettings
        from serve_app.api.state import in_memory_backends
        from serve_app.deploy.draining import DrainBoard

        _log_as_json()
        self._sessions = in_memory_backends(_api_settings(api_settings or {}) or ApiSettings()).sessions
        self._limiters: dict[tuple[int, int], TokenBucketLimiter] = {}
        self._drain = DrainBoard()

    async def begin_turn(self, session_id: str) -> Any:
        return await self._sessions.begin_turn(session_id)

    async def renew_turn(self, session_id: str, lease_id: str) -> bool:
        return await self._sessions.renew_turn(session_id, lease_id)

    async def end_turn(self, session_id: str, lease_id: str, turn: Any) -> int:
        return await self._sessions.end_turn(session_id, lease_id, turn)

    async def reset(self, session_id: str) -> bool:
        return await self._sessions.reset(session_id)

    async def acquire_many(self, clients: list[str], per_minute: int, burst: int) -> list[tuple[float, float]]:
        """A token for each of `clients`, in order (an ingress replica's waiting requests in one
        call: see `HandleState.acquire`): each answer's wait (0.0: allowed) and the tokens its
        client has left after it. The rate comes with the call, from the ingress, which holds the
        API settings (keys and limits are often set in its environment only)."""
        limiter = self._limiters.get((per_minute, burst))
        if limiter is None:
            limiter = self._limiters[(per_minute, burst)] = TokenBucketLimiter(per_minute, burst)
        return [limiter.take(client) for client in clients]

    async def report(self, replica_id: str, in_flight: int) -> bool:
        """An ingress replica's requests in flight; answers whether it should drain."""
        return self._drain.report(replica_id, in_flight)

    async def begin_drain(self) -> None:
        """A stop is coming (`csm-serve serve`): ingress replicas refuse new requests from now on."""
        self._drain.begin()

    async def in_flight(self) -> int | None:
        """Requests the ingress replicas still serve since the drain began (None: not known yet)."""
        return self._drain.in_flight()


@serve.deployment(
    name=INGRESS_DEPLOYMENT,
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=256,
    graceful_shutdown_wait_loop_s=1,
    graceful_shutdown_timeout_s=30,
)
@serve.ingress()
class APIIngress:
    """HTTP entry point: the API layer's FastAPI app, talking to `TTSModel` and `SharedState`
    through handles. It keeps no state of its own that another replica would need."""

    def __init__(
        self, model: DeploymentHandle, state: DeploymentHandle, api_settings: dict[str, Any] | None = None
    ) -> None:
        _log_as_json()
        from serve_app.api.settings import ApiSettings

        self._settings = _api_settings(dict(api_settings or {})) or ApiSettings()
        self._engine = HandleEngine(
            model,
            health_timeout_s=self._settings.health_timeout_s,
            deployment_health=serve_deployment_health(MODEL_DEPLOYMENT),
        )
        self._state = state
        self._watchdog = LoopStallWatchdog()

    async def check_health(self) -> None:
        """Ray's periodic health check: starts the event-loop stall watchdog on the replica's loop."""
        self._watchdog.start()

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Built on the replica after `__init__`, so the app can hold the handle-backed engine."""
        from serve_app.api.app import create_app
        from serve_app.deploy.draining import DrainGate
        from serve_app.deploy.handle_state import handle_backends
        from serve_app.deploy.replica_header import ServedByMiddleware

        settings = self._settings
        # Ray's HTTP servers answer with X-Request-ID (the id they gave the request, which the app uses).
        app = create_app(
            self._engine, settings, handle_backends(self._state, settings), request_id_header=False
        )
        replica_id = _replica_id() or f"pid-{os.getpid()}"
        app.add_middleware(DrainGate, replica_id=replica_id, report=self._report)
        app.add_middleware(ServedByMiddleware, replica_id=replica_id)  # outermost: on 503s too
        return app

    async def _report(self, replica_id: str, in_flight: int) -> bool:
        return await self._state.report.remote(replica_id, in_flight)


def build_app(args: dict[str, Any] | BuildArgs | None = None) -> Application:
    """Application builder: `args` as in a Serve config's `args:` (see `BuildArgs`)."""
    parsed = args if isinstance(args, BuildArgs) else BuildArgs.model_validate(args or {})
    _api_settings(parsed.api)  # fail at build time on bad API settings, not in every replica
    model = TTSModel
    max_ongoing = parsed.model_max_ongoing_requests()
    if max_ongoing is not None:
        model = model.options(max_ongoing_requests=max_ongoing)
    state = SharedState.bind(parsed.api)
    return APIIngress.bind(model.bind(parsed.model, parsed.engine_kwargs(), parsed.engine_process), state, parsed.api)


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
