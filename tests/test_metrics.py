"""Metrics: after real HTTP requests, `/metrics` shows the counters moved; request ids reach the JSON logs."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import time

import httpx
import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from serve_app.engine.types import GenerationRequest
from serve_app.observability import metrics
from serve_app.observability.logs import JsonFormatter, configure_logging
from serve_app.observability.metered_engine import MeteredEngine
from serve_app.observability.middleware import MetricsMiddleware, RequestIdMiddleware
from serve_app.observability.request_ids import request_id_var
from tests.support_api import FakeEngine, make_client
from tests.support_tools import ToneEngine, api_app, serve_http


def scrape(http: httpx.Client) -> dict[tuple[str, frozenset], float]:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def http(tmp_path_factory) -> httpx.Client:
    with (
        serve_http(api_app(ToneEngine(), tmp_path_factory.mktemp("voices"))) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client


def test_a_speak_request_moves_request_frame_audio_and_latency_metrics(http: httpx.Client) -> None:
    before = scrape(http)
    text = "Twelve chars"  # the tone engine makes 2 + len // 4 = 5 frames
    assert http.post("/speak", json={"text": text, "speaker": 0}).status_code == 200
    after = scrape(http)
    ok = {"method": "POST", "endpoint": "/speak", "status": "200"}
    assert value(after, "csm_http_requests_total", **ok) == value(before, "csm_http_requests_total", **ok) + 1
    assert value(after, "csm_frames_generated_total") == value(before, "csm_frames_generated_total") + 5
    assert value(after, "csm_audio_generated_seconds_total") == pytest.approx(
        value(before, "csm_audio_generated_seconds_total") + 0.4
    )
    for name, labels in [
        ("csm_time_to_first_audio_seconds_count", {"endpoint": "/speak"}),
        ("csm_real_time_factor_count", {}),
        ("csm_http_request_duration_seconds_count", {"method": "POST", "endpoint": "/speak"}),
    ]:
        assert value(after, name, **labels) == value(before, name, **labels) + 1, name
    assert value(after, "csm_generations_in_progress") == 0


def test_streamed_audio_records_time_to_first_audio(http: httpx.Client) -> None:
    before = scrape(http)
    with http.stream("POST", "/speak", json={"text": "Streaming this one.", "stream": True}) as r:
        assert r.status_code == 200 and len(r.read()) > 44
    after = scrape(http)
    name = "csm_time_to_first_audio_seconds_count"
    assert value(after, name, endpoint="/speak") == value(before, name, endpoint="/speak") + 1


def test_requests_refused_before_routing_count_under_their_endpoint(tmp_path) -> None:
    """The auth middleware answers 401 before the router runs: counted under `/speak` and the
    voice's template, not `unmatched`."""
    client = make_client(tmp_path, api_keys="metrics-key-0123456789")
    before = scrape(client)
    assert client.post("/speak", json={"text": "no key"}).status_code == 401
    assert client.delete("/v1/voices/some-id").status_code == 401
    after = scrape(client)
    for endpoint in ("/speak", "/v1/voices/{voice_id}"):
        labels = {"endpoint": endpoint, "status": "401"}
        assert value(after, "csm_http_errors_total", **labels) == value(
            before, "csm_http_errors_total", **labels) + 1, labels


def test_errors_are_counted_by_route_template_and_status(http: httpx.Client) -> None:
    before = scrape(http)
    assert http.post("/speak", json={"text": "x", "speaker": 2}).status_code == 422
    assert http.post("/speak", json={"text": "x" * 1000}).status_code == 413
    assert http.post("/speak", json={"text": "overload"}).status_code == 503
    assert http.delete("/v1/voices/nope").status_code == 404
    assert http.get("/no/such/route").status_code == 404
    after = scrape(http)
    for endpoint, status in [("/speak", "422"), ("/speak", "413"), ("/speak", "503"),
                             ("/v1/voices/{voice_id}", "404"), ("unmatched", "404")]:
        labels = {"endpoint": endpoint, "status": status}
        assert value(after, "csm_http_errors_total", **labels) == value(
            before, "csm_http_errors_total", **labels) + 1, labels
    # A refused request is not audio: no time-to-first-audio sample for it.
    name = "csm_time_to_first_audio_seconds_count"
    assert value(after, name, endpoint="/speak") == value(before, name, endpoint="/speak")


def test_cache_hits_and_misses_come_from_the_x_cache_header(http: httpx.Client) -> None:
    before = scrape(http)
    body = {"text": "Cache me.", "seed": 11}
    assert http.post("/speak", json=body).headers["x-cache"] == "miss"
    assert http.post("/speak", json=body).headers["x-cache"] == "hit"
    after = scrape(http)
    assert value(after, "csm_cache_hits_total", cache="response") == value(
        before, "csm_cache_hits_total", cache="response") + 1
    assert value(after, "csm_cache_misses_total", cache="response") == value(
        before, "csm_cache_misses_total", cache="response") + 1
    # The miss generated audio: one first-audio sample; the hit generated none, so none.
    name = "csm_time_to_first_audio_seconds_count"
    assert value(after, name, endpoint="/speak") == value(before, name, endpoint="/speak") + 1


def test_queue_and_batch_gauges_are_exposed(http: httpx.Client) -> None:
    metrics.record_engine_step(batch_size=7, queue_depth=3)
    samples = scrape(http)
    assert value(samples, "csm_queue_depth") == 3 and value(samples, "csm_batch_size") == 7
    metrics.record_engine_step(batch_size=0, queue_depth=0)
    samples = scrape(http)
    assert value(samples, "csm_queue_depth") == 0 and value(samples, "csm_batch_size") == 0


def test_request_ids_are_echoed_or_made_and_reach_the_json_log(http: httpx.Client) -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", stream)
    try:
        given = http.get("/info", headers={"X-Request-ID": "req-42"})
        made = http.get("/info")
        unsafe = http.get("/info", headers={"X-Request-ID": "bad id\twith spaces"})
        # The server thread logs after the response has left: give the last line a moment.
        deadline = time.monotonic() + 5
        while stream.getvalue().count('"csm_serve.access"') < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        logging.getLogger().removeHandler(handler)
    assert given.headers["x-request-id"] == "req-42"
    assert len(made.headers["x-request-id"]) == 32
    assert unsafe.headers["x-request-id"] not in ("", "bad id\twith spaces")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [entry for entry in lines if entry["logger"] == "csm_serve.access"]
    assert [entry["request_id"] for entry in access] == [
        "req-42", made.headers["x-request-id"], unsafe.headers["x-request-id"]]
    assert all(e["status"] == 200 and e["endpoint"] == "/info" and e["duration_ms"] >= 0 for e in access)


def test_json_formatter_includes_extras_and_the_current_request_id() -> None:
    record = logging.makeLogRecord({"name": "x", "levelname": "WARNING", "msg": "slot %d busy", "args": (3,),
                                    "slot": 3})
    token = request_id_var.set("rid-1")
    try:
        entry = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert entry["message"] == "slot 3 busy" and entry["slot"] == 3 and entry["request_id"] == "rid-1"


def test_metered_stream_closed_early_closes_the_engine_stream_and_counts_what_was_made() -> None:
    closed = []

    class Engine(ToneEngine):
        async def stream(self, request):  # type: ignore[override]
            try:
                async for chunk in super().stream(request):
                    yield chunk
            finally:
                closed.append(True)

    async def run() -> None:
        engine = MeteredEngine(Engine())
        chunks = engine.stream(GenerationRequest(text="a long enough text for many frames"))
        await chunks.__anext__()
        await chunks.__anext__()
        assert sample("csm_generations_in_progress") == 1
        await chunks.aclose()

    frames_before = sample("csm_frames_generated_total")
    asyncio.run(run())
    assert closed == [True]
    assert sample("csm_frames_generated_total") == frames_before + 2
    assert sample("csm_generations_in_progress") == 0


def test_utterances_are_counted_by_end_reason_and_an_empty_one_is_counted_as_a_fault() -> None:
    from serve_app.engine.types import AudioChunk, FinishReason

    class EmptyEngine(ToneEngine):
        """Ends every utterance at its first frame, with no audio (the fault to catch)."""

        async def stream(self, request):  # type: ignore[override]
            yield AudioChunk(
                pcm=np.zeros(0, np.float32), codes=np.zeros((0, 32), np.int64), frames=0,
                is_last=True, finish_reason=FinishReason.END_OF_AUDIO,
            )

    async def drain(engine: MeteredEngine, text: str) -> None:
        async for _ in engine.stream(GenerationRequest(text=text)):
            pass

    async def leave_early(engine: MeteredEngine) -> None:
        chunks = engine.stream(GenerationRequest(text="a long enough text for many frames"))
        await chunks.__anext__()
        await chunks.aclose()

    before = {r: sample("csm_generations_finished_total", reason=r) for r in ("end_of_audio", "cancelled")}
    empty = sample("csm_empty_generations_total")
    asyncio.run(drain(MeteredEngine(ToneEngine()), "a few words"))
    asyncio.run(leave_early(MeteredEngine(ToneEngine())))
    assert sample("csm_generations_finished_total", reason="end_of_audio") == before["end_of_audio"] + 1
    assert sample("csm_generations_finished_total", reason="cancelled") == before["cancelled"] + 1
    assert sample("csm_empty_generations_total") == empty  # audio came, or the caller left
    asyncio.run(drain(MeteredEngine(EmptyEngine()), "words that got no audio"))
    assert sample("csm_empty_generations_total") == empty + 1
    assert sample("csm_generations_finished_total", reason="end_of_audio") == before["end_of_audio"] + 2


def test_an_overload_refusal_is_counted_apart_from_faults(tmp_path) -> None:
    """A full engine's 503 is capacity, not a fault: an alert on reason="error" must not fire on it."""
    client = make_client(tmp_path, FakeEngine(overloaded=True))
    before = {r: sample("csm_generations_finished_total", reason=r) for r in ("overloaded", "error")}
    assert client.post("/speak", json={"text": "Hello."}).status_code == 503
    assert client.post("/speak", json={"text": "Hello.", "stream": True}).status_code == 503
    assert sample("csm_generations_finished_total", reason="overloaded") == before["overloaded"] + 2
    assert sample("csm_generations_finished_total", reason="error") == before["error"]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_inside_ray_every_update_is_mirrored_into_ray_metrics(monkeypatch) -> None:
    """With Ray initialized, each metric gets a ray.util.metrics twin that receives the same updates."""
    ray = pytest.importorskip("ray")
    from ray.util import metrics as ray_metrics

    recorded: list[tuple[str, str, float, dict]] = []

    def spy(cls: type) -> type:
        class Spy(cls):  # the real class validates names, tag keys and boundaries
            def _record(self, value, tags=None):  # type: ignore[override]
                self._validate_tags(self._get_final_tags(tags))
                recorded.append((type(self).__mro__[1].__name__, self._name, value, dict(tags or {})))

        return Spy

    for name in ("Counter", "Gauge", "Histogram"):
        monkeypatch.setattr(ray_metrics, name, spy(getattr(ray_metrics, name)))
    registry = CollectorRegistry()
    twins = [metrics.Metric(m.kind, m.name, m.doc, m.labels, m.buckets, registry=registry) for m in (
        metrics.HTTP_REQUESTS, metrics.TIME_TO_FIRST_AUDIO, metrics.QUEUE_DEPTH)]
    requests, ttfa, queue = twins

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # other tests may have started Ray
    requests.inc(method="POST", endpoint="/speak", status="200")  # Ray not initialized: local only
    assert recorded == []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    requests.inc(method="POST", endpoint="/speak", status="200")
    ttfa.observe(0.25, endpoint="/speak")
    queue.set(np.int64(4))  # numpy numbers from the engine are fine too
    assert recorded == [
        ("Counter", "csm_http_requests", 1.0, {"method": "POST", "endpoint": "/speak", "status": "200"}),
        ("Histogram", "csm_time_to_first_audio_seconds", 0.25, {"endpoint": "/speak"}),
        ("Gauge", "csm_queue_depth", 4.0, {}),
    ]
    assert registry.get_sample_value("csm_http_requests_total",
                                     {"method": "POST", "endpoint": "/speak", "status": "200"}) == 2
    assert ttfa._ray.info["boundaries"] == list(metrics.TIME_TO_FIRST_AUDIO.buckets)


def test_one_middleware_gives_a_request_the_id_the_engine_the_response_and_the_log_see(tmp_path) -> None:
    engine = FakeEngine()
    client = make_client(tmp_path, engine)
    stream = io.StringIO()
    handler = configure_logging("INFO", stream)
    try:
        response = client.post("/speak", json={"text": "Hi"}, headers={"X-Request-ID": "bad id"})
    finally:
        logging.getLogger().removeHandler(handler)
    request_id = response.headers["x-request-id"]
    assert response.status_code == 200 and len(request_id) == 32
    assert engine.requests[-1].request_id == request_id
    access = [json.loads(line) for line in stream.getvalue().splitlines() if '"csm_serve.access"' in line]
    assert [entry["request_id"] for entry in access] == [request_id]
    stack = [m.cls for m in client.app.user_middleware]
    assert stack[0] is RequestIdMiddleware and stack.count(RequestIdMiddleware) == 1


def test_behind_a_server_that_answers_with_the_id_the_app_adds_none_but_still_uses_it(tmp_path) -> None:
    """Ray Serve's HTTP servers put `X-Request-ID` on the request (the caller's, or one of theirs) and
    on the response: the app behind them (`request_id_header=False`) uses that id and adds no second
    header."""
    from fastapi.testclient import TestClient

    from serve_app.api.app import create_app
    from serve_app.api.settings import ApiSettings

    engine = FakeEngine()
    app = create_app(engine, ApiSettings(voices_dir=tmp_path / "voices"), request_id_header=False)
    with TestClient(app) as client:
        response = client.post("/speak", json={"text": "Hi"}, headers={"X-Request-ID": "from-the-proxy"})
    assert response.status_code == 200
    assert "x-request-id" not in response.headers
    assert engine.requests[-1].request_id == "from-the-proxy"


def test_a_request_cancelled_from_outside_is_logged_as_the_client_leaving() -> None:
    """Ray Serve's proxy cancels the app's task when a client leaves: 499, not a 500."""
    from starlette.routing import Route

    async def endless(scope, receive, send) -> None:
        await asyncio.sleep(3600)

    scope = {"type": "http", "method": "POST", "path": "/cancel-me", "headers": [],
             "route": Route("/cancel-me", endpoint=lambda request: None)}
    before = value(metrics_samples(), "csm_http_requests_total", method="POST", endpoint="/cancel-me", status="499")

    async def scenario() -> None:
        task = asyncio.ensure_future(MetricsMiddleware(endless)(scope, None, None))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    after = value(metrics_samples(), "csm_http_requests_total", method="POST", endpoint="/cancel-me", status="499")
    assert after == before + 1


def metrics_samples() -> dict:
    return {(s.name, frozenset(s.labels.items())): s.value for family in REGISTRY.collect() for s in family.samples}


def test_the_in_process_server_app_is_wired_once() -> None:
    """`csm-serve serve --preset` serves `create_app` as it is: one request-id and one metrics
    middleware, one `/metrics` and one playground route."""
    from serve_app.cli import build_preset_app
    from serve_app.observability.http import router as metrics_router
    from serve_app.web.routes import router as playground_router

    app = build_preset_app("tiny-random", device="cpu")
    try:
        stack = [m.cls for m in app.user_middleware]
        assert stack.count(RequestIdMiddleware) == 1 and stack.count(MetricsMiddleware) == 1
        included = [getattr(route, "original_router", None) for route in app.routes]
        assert included.count(metrics_router) == 1 and included.count(playground_router) == 1
    finally:
        app.state.services.synth.engine.close()


def test_invented_methods_do_not_invent_metric_series(tmp_path) -> None:
    """h11 (uvicorn without httptools) and HAProxy pass any method token through to the app."""
    client = make_client(tmp_path)
    for method in ("XMETHOD1", "XMETHOD2", "XMETHOD3"):
        assert client.request(method, "/speak").status_code == 405
    samples = scrape(client)
    assert not [key for key in samples if ("method", "XMETHOD1") in key[1]]
    other = {"method": "OTHER", "endpoint": "/speak", "status": "405"}
    assert value(samples, "csm_http_requests_total", **other) >= 3


def test_a_websocket_is_counted_logged_and_given_a_request_id(tmp_path) -> None:
    """A speech WebSocket counts as one GET of its route (101 once accepted; a refused handshake its
    401), with an access-log line and a request id that its contexts' engine requests carry."""
    from fastapi.testclient import TestClient
    from starlette.testclient import WebSocketDenialResponse

    from serve_app.api.app import create_app
    from serve_app.api.settings import ApiSettings

    engine = FakeEngine()
    settings = ApiSettings(voices_dir=tmp_path / "voices", api_keys="ws-metrics-key-0123456789")
    app = create_app(engine, settings)
    route = "/v1/audio/speech/stream"
    stream = io.StringIO()
    handler = configure_logging("INFO", stream)
    try:
        with TestClient(app) as client:
            before = scrape_with(client, {"Authorization": "Bearer ws-metrics-key-0123456789"})
            url = f"{route}?api_key=ws-metrics-key-0123456789"
            with client.websocket_connect(url, headers={"X-Request-ID": "ws-req-1"}) as ws:
                ws.send_json({"type": "text", "context_id": "c1", "text": "Hello there."})
                ws.send_json({"type": "close", "context_id": "c1"})
                while ws.receive_json()["type"] != "done":
                    pass
            with pytest.raises(WebSocketDenialResponse), client.websocket_connect(f"{route}?api_key=wrong"):
                pass
            after = scrape_with(client, {"Authorization": "Bearer ws-metrics-key-0123456789"})
    finally:
        logging.getLogger().removeHandler(handler)
    for status in ("101", "401"):
        labels = {"method": "GET", "endpoint": route, "status": status}
        assert value(after, "csm_http_requests_total", **labels) == value(
            before, "csm_http_requests_total", **labels) + 1, labels
    refused = {"endpoint": route, "status": "401"}
    assert value(after, "csm_http_errors_total", **refused) == value(
        before, "csm_http_errors_total", **refused) + 1
    access = [json.loads(line) for line in stream.getvalue().splitlines() if '"csm_serve.access"' in line]
    sockets = [entry for entry in access if entry["endpoint"] == route]
    assert [(entry["status"], entry["request_id"]) for entry in sockets[:1]] == [(101, "ws-req-1")]
    assert len(sockets) == 2 and sockets[1]["status"] == 401
    assert engine.requests[-1].request_id == "ws-req-1-c1"


def scrape_with(client, headers: dict[str, str]) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}
