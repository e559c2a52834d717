"""Prometheus metrics, the `GET /metrics` route, and JSON logs that carry the request id.

Three ways in, so no layer has to know about the others:
- `instrument_app(app)` adds `MetricsMiddleware` (request counts, latency, errors by status, time to
  first audio byte, cache hits/misses read from `X-Cache`, request ids, one JSON access-log line) and the
  `/metrics` route to a FastAPI app;
- `MeteredEngine(engine)` wraps any `SpeechEngine` and records frames, audio seconds, real-time factor
  and generations in progress from what the engine yields;
- plain functions for code that knows more: `record_engine_step` (the engine loop's step observer:
  batch size and queue depth), `record_cache`, ...

Every metric is kept by prometheus_client in the recording process (served at `/metrics`) and, inside a
Ray worker, mirrored into Ray's metrics (exported as `ray_csm_*` by Ray's metrics agent on every node).
Under Ray Serve, scrape Ray's metrics (as Ray's own Prometheus setup does), not `/metrics` through the
proxy: that reaches one replica at a time. The dashboard accepts both name forms.
"""
from __future__ import annotations

import contextvars
import datetime as _dt
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TextIO

import numpy as np
from fastapi import APIRouter, FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.engine.types import SAMPLE_RATE, Audio, AudioChunk, GenerationRequest


# ---------------------------------------------------------------------------------------------------
# Metrics: prometheus_client in this process, mirrored into Ray's metrics inside a Ray worker
# ---------------------------------------------------------------------------------------------------
class Metric:
    """One metric with two sinks: this process's prometheus_client registry (served at `/metrics`) and,
    once Ray is initialized here (a Serve replica), a `ray.util.metrics` twin that Ray's metrics agent
    exports with the prefix `ray_` (`ray_csm_frames_generated_total`). Each replica's engine-side
    numbers (queue depth, batch size) are then visible cluster-wide without scraping replicas one by one.
    """

    def __init__(self, kind: str, name: str, doc: str, labels: tuple[str, ...] = (),
                 buckets: tuple[float, ...] | None = None, registry: CollectorRegistry = REGISTRY) -> None:
        self.kind, self.name, self.doc, self.labels, self.buckets = kind, name, doc, labels, buckets
        extra = {"buckets": buckets} if buckets else {}
        self.prom = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[kind](
            name, doc, labels, registry=registry, **extra)
        self._ray: Any = None

    def _child(self, labels: dict[str, str]) -> Any:
        return self.prom.labels(**labels) if self.labels else self.prom

    def _ray_twin(self) -> Any:
        if self._ray is None:
            ray = sys.modules.get("ray")  # never import Ray just for metrics
            if ray is None or not ray.is_initialized():
                return None
            from ray.util import metrics as ray_metrics

            tags = {"tag_keys": self.labels} if self.labels else {}
            if self.kind == "counter":
                self._ray = ray_metrics.Counter(self.name, self.doc, **tags)
            elif self.kind == "gauge":
                self._ray = ray_metrics.Gauge(self.name, self.doc, **tags)
            else:
                boundaries = list(self.buckets or ())
                self._ray = ray_metrics.Histogram(self.name, self.doc, boundaries=boundaries, **tags)
        return self._ray

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).inc(amount)
        twin = self._ray_twin()
        if twin is not None:
            twin.inc(float(amount), tags=labels or None)

    def set(self, value: float, **labels: str) -> None:
        self._child(labels).set(value)
        twin = self._ray_twin()
        if twin is not None:
            twin.set(float(value), tags=labels or None)

    def observe(self, value: float, **labels: str) -> None:
        self._child(labels).observe(value)
        twin = self._ray_twin()
        if twin is not None:
            twin.observe(float(value), tags=labels or None)


# Names are the dashboard's contract (configs/grafana/csm-serve.json).
HTTP_REQUESTS = Metric("counter", "csm_http_requests", "HTTP requests answered, by route and status.",
                       ("method", "endpoint", "status"))
HTTP_LATENCY = Metric(
    "histogram", "csm_http_request_duration_seconds", "Time from request start to the last response byte.",
    ("method", "endpoint"), (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120))
HTTP_ERRORS = Metric("counter", "csm_http_errors", "Responses with status >= 400.", ("endpoint", "status"))
TIME_TO_FIRST_AUDIO = Metric(
    "histogram", "csm_time_to_first_audio_seconds",
    "Time from request start to the first audio byte sent (the latency a listener hears).",
    ("endpoint",), (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30))
REAL_TIME_FACTOR = Metric(
    "histogram", "csm_real_time_factor",
    "Generation wall time divided by audio duration; below 1 is faster than real time.",
    (), (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1, 1.5, 2, 3, 5, 10, 30))
FRAMES_GENERATED = Metric("counter", "csm_frames_generated", "Mimi frames generated (80 ms of audio each).")
AUDIO_SECONDS = Metric("counter", "csm_audio_generated_seconds", "Seconds of audio generated.")
CACHE_HITS = Metric("counter", "csm_cache_hits", "Requests answered from a cache.", ("cache",))
CACHE_MISSES = Metric("counter", "csm_cache_misses", "Cacheable requests that were generated.", ("cache",))
QUEUE_DEPTH = Metric("gauge", "csm_queue_depth", "Requests waiting for an engine slot.")
BATCH_SIZE = Metric("gauge", "csm_batch_size", "Sequences in the engine's latest batched step.")
GENERATIONS_IN_PROGRESS = Metric("gauge", "csm_generations_in_progress", "Utterances being generated now.")

AUDIO_CONTENT_TYPES = ("audio/", "text/event-stream")
"""Responses whose first body byte counts as 'first audio' (WAV/PCM/MP3..., and OpenAI SSE events)."""


# ---------------------------------------------------------------------------------------------------
# Functions other layers call
# ---------------------------------------------------------------------------------------------------
def observe_time_to_first_audio(seconds: float, endpoint: str) -> None:
    TIME_TO_FIRST_AUDIO.observe(seconds, endpoint=endpoint)


def observe_generation(frames: int, audio_seconds: float, wall_seconds: float) -> None:
    """Record one finished (or cancelled) utterance: frames, audio length and real-time factor."""
    if frames > 0:
        FRAMES_GENERATED.inc(frames)
    if audio_seconds > 0:
        AUDIO_SECONDS.inc(audio_seconds)
        REAL_TIME_FACTOR.observe(wall_seconds / audio_seconds)


def record_cache(hit: bool, cache: str = "response") -> None:
    (CACHE_HITS if hit else CACHE_MISSES).inc(cache=cache)


def record_error(status: int, endpoint: str) -> None:
    HTTP_ERRORS.inc(endpoint=endpoint, status=str(status))


def record_engine_step(batch_size: int, queue_depth: int) -> None:
    """The engine's step observer: its batch size and waiting queue, as gauges."""
    BATCH_SIZE.set(batch_size)
    QUEUE_DEPTH.set(queue_depth)


_in_progress = 0
_in_progress_lock = threading.Lock()


def _generations_in_progress(delta: int) -> None:
    global _in_progress
    with _in_progress_lock:
        _in_progress += delta
        GENERATIONS_IN_PROGRESS.set(_in_progress)


# ---------------------------------------------------------------------------------------------------
# Request ids and JSON logs
# ---------------------------------------------------------------------------------------------------
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("csm_request_id", default=None)
_SAFE_REQUEST_ID = re.compile(r"^[\w.:@/+=-]{1,128}$")  # the API echoes the same set


def current_request_id() -> str | None:
    """The id of the HTTP request being served in this task, if any."""
    return request_id_var.get()


def clean_request_id(value: str | None) -> str:
    """Keep a caller's id when it is short and log-safe; otherwise make a new one."""
    if value and _SAFE_REQUEST_ID.match(value):
        return value
    return uuid.uuid4().hex


_UTC = _dt.timezone.utc
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int | str = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's records as JSON lines to `stream` (stderr by default); returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


access_log = logging.getLogger("csm_serve.access")


# ---------------------------------------------------------------------------------------------------
# HTTP middleware and route
# ---------------------------------------------------------------------------------------------------
QUIET_PATHS = frozenset({"/metrics", "/health", "/-/healthz", "/-/routes"})
"""Probe and scrape paths: counted, but logged at DEBUG so they do not flood the access log."""
CLIENT_CLOSED_REQUEST = 499
"""Status logged for a request whose client left before any response (as nginx does)."""


def _endpoint(scope: Scope) -> str:
    """The route template (`/sessions/{session_id}`), so label values stay few; 'unmatched' for 404s."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class MetricsMiddleware:
    """Pure ASGI middleware (it does not buffer streamed bodies, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        incoming = _header(scope, b"x-request-id")
        request_id = clean_request_id(incoming)
        if incoming != request_id:
            # Downstream handlers (which echo X-Request-ID) then see the same id as the logs.
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"x-request-id"]
            scope["headers"].append((b"x-request-id", request_id.encode()))
        token = request_id_var.set(request_id)
        state: dict[str, Any] = {"status": 500, "audio": False, "first_audio": None}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                headers = list(message.get("headers", []))
                content_type = _value(headers, b"content-type")
                state["audio"] = content_type.startswith(AUDIO_CONTENT_TYPES)
                state["cache"] = _value(headers, b"x-cache").lower()
                if not _value(headers, b"x-request-id"):
                    headers.append((b"x-request-id", request_id.encode()))
                    message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                if state["audio"] and state["first_audio"] is None and message.get("body"):
                    state["first_audio"] = time.perf_counter() - start
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            request_id_var.reset(token)
            self._record(scope, state, request_id, time.perf_counter() - start)

    @staticmethod
    def _record(scope: Scope, state: dict[str, Any], request_id: str, elapsed: float) -> None:
        method, endpoint, status = scope["method"], _endpoint(scope), state["status"]
        if scope.get("state", {}).get("client_disconnected") and not state.get("started"):
            status = CLIENT_CLOSED_REQUEST
        HTTP_REQUESTS.inc(method=method, endpoint=endpoint, status=str(status))
        HTTP_LATENCY.observe(elapsed, method=method, endpoint=endpoint)
        if status >= 400:
            record_error(status, endpoint)
        if state["first_audio"] is not None and status < 400:
            observe_time_to_first_audio(state["first_audio"], endpoint)
        if state.get("cache") in ("hit", "miss"):
            record_cache(state["cache"] == "hit")
        level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
        access_log.log(
            level,
            "%s %s %s",
            method,
            scope["path"],
            status,
            extra={
                "request_id": request_id,
                "method": method,
                "path": scope["path"],
                "endpoint": endpoint,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "client_id": scope.get("state", {}).get("client_id"),  # a key's fingerprint, never the key
            },
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _value(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Prometheus text exposition of this process's metrics."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def instrument_app(app: FastAPI) -> FastAPI:
    """Add the middleware and `GET /metrics` to an app before it starts; a second call does nothing."""
    if getattr(app.state, "csm_metrics", False):
        return app
    app.state.csm_metrics = True
    app.add_middleware(MetricsMiddleware)
    app.include_router(router)
    return app


# ---------------------------------------------------------------------------------------------------
# Engine wrapper
# ---------------------------------------------------------------------------------------------------
def metered(engine: Any) -> MeteredEngine:
    """`engine` wrapped in `MeteredEngine`, unless it already is (so nothing is counted twice)."""
    return engine if isinstance(engine, MeteredEngine) else MeteredEngine(engine)


class MeteredEngine:
    """A `SpeechEngine` that records what another one produces; everything else is delegated."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def generate(self, request: GenerationRequest) -> Audio:
        start = time.perf_counter()
        _generations_in_progress(+1)
        try:
            audio = await self._engine.generate(request)
        finally:
            _generations_in_progress(-1)
        observe_generation(len(audio.codes), audio.duration_s, time.perf_counter() - start)
        return audio

    async def stream(self, request: GenerationRequest) -> AsyncIterator[AudioChunk]:
        start = time.perf_counter()
        frames = samples = 0
        chunks = self._engine.stream(request)
        _generations_in_progress(+1)
        try:
            async for chunk in chunks:
                frames += chunk.frames
                samples += int(np.asarray(chunk.pcm).shape[-1])
                yield chunk
        finally:
            _generations_in_progress(-1)
            closer = getattr(chunks, "aclose", None)
            if closer is not None:
                await closer()  # cancel the engine's generation promptly when our caller stops early
            observe_generation(frames, samples / SAMPLE_RATE, time.perf_counter() - start)

    async def encode_audio(self, pcm: np.ndarray) -> np.ndarray:
        return await self._engine.encode_audio(pcm)

    async def info(self) -> dict[str, Any]:
        return await self._engine.info()

    async def check_health(self) -> None:
        await self._engine.check_health()
