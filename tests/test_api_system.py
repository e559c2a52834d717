"""/health, /info, and what create_app mounts besides the API (metrics, playground, OpenAPI)."""

from tests.support_api import FakeEngine, make_client


def test_health_is_503_until_the_engine_is_healthy(tmp_path) -> None:
    engine = FakeEngine(healthy=False)
    client = make_client(tmp_path, engine, retry_after_s=2)
    r = client.get("/health")
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert "warming up" in r.json()["detail"]
    assert client.head("/health").status_code == 503  # load balancers probe with HEAD too
    engine.healthy = True
    assert client.get("/health").json() == {"status": "ok"}
    assert client.head("/health").status_code == 200


def test_health_times_out_on_a_hung_engine(tmp_path) -> None:
    class Hung(FakeEngine):
        async def check_health(self) -> None:
            import asyncio

            await asyncio.sleep(30)

    r = make_client(tmp_path, Hung(), health_timeout_s=0.05).get("/health")
    assert r.status_code == 503 and "TimeoutError" in r.json()["detail"]


def test_info_reports_model_audio_format_and_limits(tmp_path) -> None:
    info = make_client(tmp_path, max_text_chars=123).get("/info").json()
    assert (info["model"], info["revision"]) == ("fake-csm", "rev-1")
    assert (info["sample_rate"], info["frame_ms"], info["num_codebooks"]) == (24_000, 80, 32)
    assert info["limits"]["max_text_chars"] == 123
    assert info["engine"]["slots"] == 4


def test_metrics_and_playground_are_mounted(tmp_path) -> None:
    client = make_client(tmp_path)
    client.post("/speak", json={"text": "Hello", "seed": 9})
    client.post("/speak", json={"text": "Hello", "seed": 9})
    metrics = client.get("/metrics").text
    assert 'csm_cache_hits_total{cache="response"}' in metrics
    assert client.get("/").headers["content-type"].startswith("text/html")


def test_openapi_documents_constraints_and_audio_responses(tmp_path) -> None:
    spec = make_client(tmp_path).get("/openapi.json").json()
    speak = spec["components"]["schemas"]["SpeakRequest"]["properties"]
    assert speak["speaker"]["minimum"] == 0 and speak["speaker"]["maximum"] == 1
    assert "audio/wav" in spec["paths"]["/speak"]["post"]["responses"]["200"]["content"]
    batch = spec["components"]["schemas"]["BatchSpeakRequest"]["properties"]["texts"]
    assert batch["maxItems"] == 10 and batch["minItems"] == 1
