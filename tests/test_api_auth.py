"""API keys and rate limits: off by default; when configured, every API route needs a valid
`Bearer` key (probes, metrics and docs stay open), each key has its own token bucket, and keys never
reach the logs."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

import pytest

from serve_app.api.auth import TokenBucketLimiter, key_id
from serve_app.client import AuthenticationError, RateLimitError, TTSClient
from serve_app.observability.logs import configure_logging
from tests.support_api import FakeEngine, make_client
from tests.support_tools import ToneEngine, serve_http

SPEAK = {"text": "Hello there.", "max_duration_ms": 240}
KEYS = "alpha-key-0123456789,beta-key-9876543210"
ALPHA, BETA = KEYS.split(",")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_without_keys_the_api_is_open(tmp_path: Path) -> None:
    client = make_client(tmp_path)
    assert client.post("/speak", json=SPEAK).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), bearer(ALPHA + "x"), {"Authorization": f"Basic {ALPHA}"}, {"Authorization": ALPHA}],
    ids=["none", "unknown", "longer", "basic-scheme", "no-scheme"],
)
def test_a_missing_or_wrong_key_is_401(tmp_path: Path, headers: dict[str, str]) -> None:
    client = make_client(tmp_path, api_keys=KEYS)
    r = client.post("/speak", json=SPEAK, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer") and "Bearer <key>" in r.json()["detail"]
    assert r.headers["x-request-id"]
    assert client.get("/v1/voices", headers=headers).status_code == 401
    openai = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi", "voice": "nova"}, headers=headers)
    assert openai.status_code == 401 and openai.json()["error"]["type"] == "authentication_error"  # OpenAI's shape


def test_every_configured_key_works_and_open_paths_need_none(tmp_path: Path) -> None:
    client = make_client(tmp_path, api_keys=KEYS)
    for key in (ALPHA, BETA):
        assert client.post("/speak", json=SPEAK, headers=bearer(key)).status_code == 200
    for path in ("/health", "/metrics", "/openapi.json", "/docs", "/"):
        assert client.get(path).status_code == 200, path


def test_the_key_is_checked_before_the_body_is_read(tmp_path: Path) -> None:
    client = make_client(tmp_path, api_keys=KEYS, max_body_bytes=1000)
    r = client.post("/speak", content=b"x" * 5000, headers={"content-type": "application/json"})
    assert r.status_code == 401


def test_keys_from_a_file_with_comments(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"# issued 2026-12\n{ALPHA}\n\n  {BETA}  \n")
    client = make_client(tmp_path, api_keys_file=key_file)
    assert client.post("/speak", json=SPEAK, headers=bearer(BETA)).status_code == 200
    assert client.post("/speak", json=SPEAK, headers=bearer("# issued 2026-12")).status_code == 401


def test_misconfigured_auth_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no API keys"):
        make_client(tmp_path, auth_required=True)
    with pytest.raises(ValueError, match="cannot read api_keys_file"):
        make_client(tmp_path, api_keys_file=tmp_path / "missing")
    assert make_client(tmp_path, auth_required=True, api_keys=ALPHA).get("/health").status_code == 200


def test_each_key_has_its_own_rate_limit(tmp_path: Path) -> None:
    client = make_client(tmp_path, api_keys=KEYS, rate_limit_per_minute=6, rate_limit_burst=2)
    statuses = [client.post("/speak", json=SPEAK, headers=bearer(ALPHA)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = client.post("/speak", json=SPEAK, headers=bearer(ALPHA))
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "6 requests per minute" in limited.json()["detail"]
    openai = client.get("/v1/models", headers=bearer(ALPHA))
    assert openai.status_code == 429 and "per minute" in openai.json()["error"]["message"]
    assert client.post("/speak", json=SPEAK, headers=bearer(BETA)).status_code == 200
    assert all(client.get("/health").status_code == 200 for _ in range(5))  # probes are never limited


def test_a_streams_server_timing_says_how_long_it_waited_for_its_token(tmp_path: Path) -> None:
    client = make_client(tmp_path, rate_limit_per_minute=600, rate_limit_burst=5)
    r = client.post("/speak", json={**SPEAK, "stream": True})
    assert r.status_code == 200
    timings = {k.strip(): float(v) for k, v in (p.split(";dur=") for p in r.headers["server-timing"].split(","))}
    assert 0 <= timings["limit"] <= timings["app"]
    plain = make_client(tmp_path / "plain")
    r = plain.post("/speak", json={**SPEAK, "stream": True})
    assert "limit;" not in r.headers["server-timing"]  # no limiter, no wait for a token


def test_without_keys_the_rate_limit_is_per_client_address(tmp_path: Path) -> None:
    client = make_client(tmp_path, rate_limit_per_minute=60, rate_limit_burst=1)
    assert client.post("/speak", json=SPEAK).status_code == 200
    assert client.post("/speak", json=SPEAK).status_code == 429


def test_token_bucket_refills_at_the_configured_rate() -> None:
    now = [0.0]
    limiter = TokenBucketLimiter(per_minute=60, burst=2, max_clients=2, clock=lambda: now[0])

    def acquire(client: str) -> float:
        return asyncio.run(limiter.acquire(client))

    assert [acquire("a") for _ in range(2)] == [0.0, 0.0]
    assert acquire("a") == pytest.approx(1.0)
    now[0] = 0.5
    assert acquire("a") == pytest.approx(0.5)  # half a token back, half still owed
    now[0] = 1.0
    assert acquire("a") == 0.0
    acquire("b")
    acquire("c")  # evicts "a", the least recently seen: memory stays bounded
    assert acquire("a") == 0.0 and len(limiter._buckets) == 2


def test_keys_never_reach_the_logs_but_their_fingerprint_does(tmp_path: Path) -> None:
    client = make_client(tmp_path, api_keys=KEYS)
    stream = io.StringIO()
    handler = configure_logging("INFO", stream)
    try:
        client.post("/speak", json=SPEAK, headers=bearer(ALPHA))
        client.post("/speak", json=SPEAK, headers=bearer("guessed-" + BETA))
    finally:
        logging.getLogger().removeHandler(handler)
    logged = stream.getvalue()
    assert key_id(ALPHA) in logged
    assert ALPHA not in logged and BETA not in logged


def test_python_client_and_cli_send_the_key_and_get_typed_errors(tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from serve_app.api.app import create_app
    from serve_app.api.settings import ApiSettings
    from serve_app.cli import cli

    settings = ApiSettings(voices_dir=tmp_path / "voices", api_keys=KEYS, rate_limit_per_minute=60, rate_limit_burst=1)
    with serve_http(create_app(ToneEngine(), settings)) as url:
        with TTSClient(url, api_key=ALPHA, timeout=30) as good:
            assert good.speak("Hello.", max_duration_ms=240)[:4] == b"RIFF"
            with pytest.raises(RateLimitError) as limited:
                good.speak("Again.", max_duration_ms=240)
            assert limited.value.retry_after and limited.value.retry_after >= 1
        with TTSClient(url, api_key="wrong", timeout=30) as bad, pytest.raises(AuthenticationError, match="API key"):
            bad.speak("Hello.")
        out = tmp_path / "cli.wav"
        monkeypatch.setenv("CSM_API_KEY", BETA)
        ok = CliRunner().invoke(cli, ["--url", url, "speak", "Hi.", "-o", str(out), "--max-duration-ms", "240"])
        assert ok.exit_code == 0, ok.output
        assert out.read_bytes()[:4] == b"RIFF"
        monkeypatch.delenv("CSM_API_KEY")
        refused = CliRunner().invoke(cli, ["--url", url, "speak", "Hi.", "-o", str(out)])
        assert refused.exit_code == 1 and "HTTP 401" in refused.output


def test_a_websocket_key_in_the_query_string_never_reaches_the_logs(tmp_path: Path) -> None:
    """Browsers send a WebSocket's key as `?api_key=`; uvicorn logs the socket's path with its query,
    through the JSON log as `csm-serve serve` configures it (`log_config=None`)."""
    import threading
    import time

    import uvicorn
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from serve_app.api.app import create_app
    from serve_app.api.settings import ApiSettings
    from tests.support_api import FakeEngine

    app = create_app(FakeEngine(), ApiSettings(voices_dir=tmp_path / "voices", api_keys=KEYS))
    stream = io.StringIO()
    handler = configure_logging("INFO", stream)
    # As in a fresh `csm-serve serve` process: an earlier test's uvicorn may have configured its loggers.
    uvicorn_loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error")]
    saved = [(log.handlers[:], log.propagate, log.level) for log in uvicorn_loggers]
    for log in uvicorn_loggers:
        log.handlers.clear()
        log.propagate = True
        log.setLevel(logging.NOTSET)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/v1/audio/speech/stream?api_key="
        with connect(url + ALPHA):
            pass
        with pytest.raises(InvalidStatus):
            connect(url + "guessed-" + BETA)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        logging.getLogger().removeHandler(handler)
        for log, (handlers, propagate, level) in zip(uvicorn_loggers, saved):
            log.handlers[:] = handlers
            log.propagate = propagate
            log.setLevel(level)
    logged = stream.getvalue()
    assert "/v1/audio/speech/stream?api_key=[redacted]" in logged
    assert ALPHA not in logged and BETA not in logged


def test_each_request_reaches_the_engine_as_its_callers(tmp_path: Path) -> None:
    """The engine shares its slots among callers: every engine request a call makes is filed under
    the key it came with (its id, never the key), whatever the endpoint."""
    engine = FakeEngine()
    client = make_client(tmp_path, engine, api_keys=KEYS)
    calls = [
        ("/speak", SPEAK),
        ("/speak", {**SPEAK, "stream": True}),
        ("/batch_speak", {"texts": ["One.", "Two."], "max_duration_per_text_ms": 1000}),
        ("/conversation", {"turns": [{"speaker": 0, "text": "Hi."}, {"speaker": 1, "text": "Hello."}]}),
        ("/v1/audio/speech", {"model": "tts-1", "input": "Hi there.", "voice": "nova"}),
    ]
    for key in (ALPHA, BETA):
        for path, body in calls:
            before = len(engine.requests)
            assert client.post(path, json=body, headers=bearer(key)).status_code == 200, path
            made = engine.requests[before:]
            assert made and {r.caller for r in made} == {key_id(key)}, path


def test_without_keys_callers_are_their_addresses_where_a_rate_limit_runs_else_anonymous(tmp_path: Path) -> None:
    engine = FakeEngine()
    assert make_client(tmp_path, engine).post("/speak", json=SPEAK).status_code == 200
    assert engine.requests[-1].caller is None  # no keys, no limiter: one anonymous caller
    limited = make_client(tmp_path, engine, rate_limit_per_minute=600)
    assert limited.post("/speak", json=SPEAK).status_code == 200
    assert engine.requests[-1].caller == "addr_testclient"
