"""Prometheus metrics and the functions other layers call to record them.

Every metric is kept by prometheus_client in the recording process (served at `/metrics`) and, inside a
Ray worker, mirrored into Ray's metrics (exported as `ray_csm_*` by Ray's metrics agent on every node).
Under Ray Serve, scrape Ray's metrics (as Ray's own Prometheus setup does), not `/metrics` through the
proxy: that reaches one replica at a time. The dashboard accepts both name forms.
"""
from __future__ import annotations

import sys
import threading
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


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
GENERATIONS_FINISHED = Metric(
    "counter", "csm_generations_finished",
    "Utterances finished, by why they ended (end_of_audio, length, silence, cancelled, overloaded, error).",
    ("reason",))
EMPTY_GENERATIONS = Metric(
    "counter", "csm_empty_generations",
    "Utterances that ended, not cancelled, with no audio at all: a fault (such as a model that ends every "
    "utterance at its first frame), since every utterance asks for some speech.")


def observe_time_to_first_audio(seconds: float, endpoint: str) -> None:
    TIME_TO_FIRST_AUDIO.observe(seconds, endpoint=endpoint)


def observe_generation(frames: int, audio_seconds: float, wall_seconds: float, reason: str) -> None:
    """Record one finished (or cancelled) utterance: why it ended, frames, audio length and real-time
    factor."""
    GENERATIONS_FINISHED.inc(reason=reason)
    if frames == 0 and reason not in ("cancelled", "overloaded", "error"):
        EMPTY_GENERATIONS.inc()
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


def generations_in_progress(delta: int) -> None:
    """Count an utterance in (+1) or out (-1)."""
    global _in_progress
    with _in_progress_lock:
        _in_progress += delta
        GENERATIONS_IN_PROGRESS.set(_in_progress)
