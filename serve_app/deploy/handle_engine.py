"""A `SpeechEngine` backed by a Ray Serve deployment handle.

The API layer only knows `SpeechEngine`; this adapter lets the very same FastAPI app run on the
ingress replica and reach the model replicas through Ray. It also turns Ray's transport failures
(backpressure, a dead or missing replica) into `EngineOverloadedError`, which the API answers with a
503 and Retry-After, so a full queue or a crashed GPU replica never shows up as a 500 or a hang.
Errors raised by the engine itself (bad prompt, engine overload) cross Ray as instances of their
own class and pass through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import numpy as np
from ray.exceptions import ObjectLostError, RayActorError, RayError, RayTaskError, WorkerCrashedError
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle

from serve_app.engine.types import Audio, AudioChunk, EngineOverloadedError, GenerationRequest

T = TypeVar("T")

DEFAULT_RETRY_AFTER_S = 1.0
"""Retry-After hint used when Ray does not give one (a replica died, none available)."""

SERIALIZATION = "pickle"
"""How Ray Serve's gRPC transport serialises the calls' arguments and results. The model replica
serialises every streamed chunk on its event-loop thread, beside the engine's loop thread; plain
pickle does an `AudioChunk` of 8 frames in 8.7 µs where cloudpickle (Ray's default) takes 19.7 µs
(`python benchmarks/bench_chunk_pickle.py`, `benchmarks/results/2026-12-04-cpu-chunk-pickle.json`).
Every object that crosses is of an importable class, which is all plain pickle needs."""


class ReplicaUnavailableError(EngineOverloadedError):
    """The model replicas cannot take the request now; retrying later may succeed (HTTP 503)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = DEFAULT_RETRY_AFTER_S if retry_after_s is None else retry_after_s


class _ProbeTimeoutError(ReplicaUnavailableError):
    """A call with a deadline got no answer in time (the replica may be busy, or gone)."""


def is_system_failure(exc: BaseException) -> bool:
    """True for Ray/Serve failures (a replica or worker lost, a Serve routing error), also when
    wrapped in a task error; False for exceptions raised by the engine's own code."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (RayActorError, WorkerCrashedError, ObjectLostError, RayServeException)):
            return True
        if isinstance(current, RayTaskError):
            current = current.cause  # the remote exception: an engine error or a lost dependency
        elif isinstance(current, RayError):
            return True  # a Ray system error that did not come from user code
        else:
            current = current.__cause__
    return False


def _raise_mapped(exc: BaseException) -> NoReturn:
    """Re-raise a Ray/Serve failure as `ReplicaUnavailableError`; engine errors unchanged."""
    if isinstance(exc, BackPressureError):
        raise ReplicaUnavailableError(exc.message, exc.retry_after_s) from exc
    if is_system_failure(exc):
        raise ReplicaUnavailableError(f"speech model replica unavailable: {type(exc).__name__}") from exc
    raise exc


DeploymentHealth = Callable[[], Awaitable[bool | None]]
"""Whether a deployment has a replica that passes Ray's own health checks (None: not known)."""

PROBE_TIMEOUT_S = 2.0
"""How long a health probe waits for a model replica's own answer before asking Ray instead."""


def serve_deployment_health(deployment: str, cache_s: float = 2.0) -> DeploymentHealth:
    """Ray's view of `deployment` in this replica's application: its controller calls each
    replica's `check_health` directly, not through the request queue, so the answer stays right
    while the queue is long. Cached for `cache_s` (one controller call per probe burst)."""
    from ray import serve

    cached: dict[str, Any] = {"at": -cache_s, "healthy": None}

    def ask() -> bool | None:
        app = serve.status().applications.get(serve.get_replica_context().app_name)
        overview = app.deployments.get(deployment) if app is not None else None
        if overview is None:
            return None
        return any(str(getattr(state, "value", state)) == "RUNNING" and n > 0 for state, n in overview.replica_states.items())

    async def healthy() -> bool | None:
        if time.monotonic() - cached["at"] >= cache_s:
            cached["healthy"] = await asyncio.to_thread(ask)
            cached["at"] = time.monotonic()
        return cached["healthy"]

    return healthy


class HandleEngine:
    """`SpeechEngine` over a `DeploymentHandle` to the `TTSModel` deployment."""

    def __init__(
        self,
        handle: DeploymentHandle,
        *,
        health_timeout_s: float = 10.0,
        deployment_health: DeploymentHealth | None = None,
    ) -> None:
        """`deployment_health`: asked when a health probe gets no answer in time (the probe waits in
        the same queue as the speech requests, so a busy deployment answers it late)."""
        self._handle = handle.options(
            request_serialization=SERIALIZATION, response_serialization=SERIALIZATION
        )
        self._health_timeout_s = health_timeout_s
        self._deployment_health = deployment_health

    async def _call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        response = getattr(self._handle, method).remote(*args)
        try:
            if timeout_s is None:
                return await response
            return await asyncio.wait_for(awaited(response), timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise _ProbeTimeoutError(f"speech model did not answer {method} in {timeout_s:g} s") from None
        except Exception as exc:  # noqa: BLE001 - mapped or re-raised unchanged
            _raise_mapped(exc)

    async def generate(self, request: GenerationRequest) -> Audio:
        return await self._call("generate", request)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[AudioChunk]:
        """Relay the replica's chunks; closing this iterator cancels generation on the replica."""
        response = self._handle.options(stream=True).stream.remote(request)
        finished = False
        try:
            async for chunk in response:
                yield chunk
            finished = True
        except Exception as exc:  # noqa: BLE001 - mapped or re-raised unchanged
            finished = True
            _raise_mapped(exc)
        finally:
            if not finished:
                # The caller went away (client disconnect, aclose): free the engine slot.
                with contextlib.suppress(Exception):
                    response.cancel()

    async def encode_audio(self, pcm: np.ndarray) -> np.ndarray:
        return await self._call("encode_audio", pcm)

    async def info(self) -> dict[str, Any]:
        return await self._call("info", timeout_s=self._health_timeout_s)

    async def check_health(self) -> None:
        """The model replicas' health. A full queue (Ray's backpressure) means they are up and busy:
        healthy, so a readiness probe does not take the service out of rotation under load. So is
        a probe that waited its turn too long behind the speech requests, where Ray's own health
        checks (`deployment_health`) find a running replica."""
        probe_s = min(PROBE_TIMEOUT_S, self._health_timeout_s) if self._deployment_health else self._health_timeout_s
        try:
            await self._call("check_health", timeout_s=probe_s)
        except ReplicaUnavailableError as exc:
            if isinstance(exc.__cause__, BackPressureError):
                return
            slow = isinstance(exc, _ProbeTimeoutError) and self._deployment_health is not None
            if slow and await self._deployment_health():  # type: ignore[misc]
                return
            raise


async def awaited(awaitable: Awaitable[T]) -> T:
    """Wrap an awaitable object (e.g. `DeploymentResponse`) in a coroutine for `asyncio.wait_for`."""
    return await awaitable
