"""End to end over real HTTP: the Ray Serve app of configs/serve/local.yaml (ingress → model replica).

One Ray instance serves every test here (tests/support_ray.py). The last test changes the
deployment (tighter queue limits) and restores it, so it runs last. Several replicas, autoscaling
and killed replicas: tests/test_e2e_ray_reliability.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from serve_app.deployments import MODEL_DEPLOYMENT, MODEL_ROUTING_BACKOFF_S
from serve_app.engine.types import SAMPLE_RATE
from tests.support_ray import ServeInstance

pytestmark = pytest.mark.ray

TIMEOUT = httpx.Timeout(60.0)


def _wav(data: bytes) -> tuple[np.ndarray, int, int]:
    pcm, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return pcm[:, 0], rate, pcm.shape[1]


def _assert_speech(data: bytes, max_ms: int) -> np.ndarray:
    pcm, rate, channels = _wav(data)
    assert (rate, channels) == (SAMPLE_RATE, 1)
    assert 0 < len(pcm) <= max_ms * SAMPLE_RATE // 1000
    return pcm


def _tone_b64(seconds: float = 1.0, rate: int = 16_000) -> str:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def http(ray_serve: ServeInstance) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ray_serve.base_url, timeout=TIMEOUT) as client:
        yield client


def test_health_and_info(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    info = http.get("/info").json()
    assert info["sample_rate"] == SAMPLE_RATE
    assert info["engine"]["replica"]["pid"] > 0  # answered by a TTSModel replica through the handle
    # ... whose engine runs in a child process of its own (the default)
    assert info["engine"]["engine_process"]["pid"] not in (info["engine"]["replica"]["pid"], 0)


def test_speak_returns_a_wav_within_the_duration_limit(http: httpx.Client) -> None:
    response = http.post(
        "/speak", json={"text": "Hello from the cluster.", "speaker": 0, "max_duration_ms": 800}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers["x-request-id"]
    _assert_speech(response.content, 800)


def test_one_request_id_per_response_and_a_json_log_line_for_each_request(http: httpx.Client) -> None:
    """Ray's HTTP proxy answers with `X-Request-ID` itself: the app adds no second one. The ingress
    replica writes its JSON access line to its log (Ray's log files of this session)."""
    request_id = f"e2e-{time.monotonic_ns()}"
    response = http.post("/speak", json={"text": "Logged.", "max_duration_ms": 400},
                         headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    assert response.headers.get_list("x-request-id") == [request_id]
    assert len(http.get("/health").headers.get_list("x-request-id")) == 1  # none sent: Ray's own
    logs = Path(os.environ["RAY_TMPDIR"]) / "session_latest" / "logs"
    deadline, found = time.monotonic() + 20, []
    while not found and time.monotonic() < deadline:
        time.sleep(0.5)
        found = [
            json.loads(line)
            for path in logs.glob("worker-*.err")
            for line in path.read_text(errors="replace").splitlines()
            if request_id in line and line.startswith("{")
        ]
    access = [entry for entry in found if entry.get("logger") == "csm_serve.access"]
    assert [(e["request_id"], e["path"], e["status"]) for e in access] == [(request_id, "/speak", 200)], found


@pytest.mark.parametrize(
    ("path", "body", "max_ms"),
    [
        (
            "/conversation",
            {
                "turns": [
                    {"speaker": 0, "text": "Hi there.", "pause_ms": 100},
                    {"speaker": 1, "text": "Hello!"},
                ],
                "max_total_duration_ms": 5000,
            },
            5000,
        ),
        (
            "/clone_voice",
            {
                "text": "Same voice.",
                "reference_audio_b64": _tone_b64(),
                "reference_text": "A reference.",
                "max_duration_ms": 1000,
            },
            1000,
        ),
    ],
    ids=["conversation", "clone_voice"],
)
def test_generating_endpoints(http: httpx.Client, path: str, body: dict[str, Any], max_ms: int) -> None:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    _assert_speech(response.content, max_ms)


def test_batch_speak_keeps_input_order(http: httpx.Client) -> None:
    texts = ["First one.", "The second text is a little longer."]
    response = http.post(
        "/batch_speak", json={"texts": texts, "speaker": 0, "seed": 7, "max_duration_per_text_ms": 1000}
    )
    assert response.status_code == 200, response.text
    batch = [_assert_speech(base64.b64decode(item), 1000) for item in response.json()]
    assert len(batch) == len(texts)
    assert len(batch[0]) != len(batch[1]) or not np.allclose(batch[0], batch[1])  # order is observable
    for text, pcm in zip(texts, batch):
        alone = http.post("/speak", json={"text": text, "speaker": 0, "seed": 7, "max_duration_ms": 1000})
        solo = _assert_speech(alone.content, 1000)
        assert len(solo) == len(pcm) and np.allclose(solo, pcm, atol=1e-3), text


def test_sessions_are_isolated_and_resettable(http: httpx.Client) -> None:
    def turn(session: str) -> int:
        response = http.post(
            "/contextual_speak",
            json={"text": "Go on.", "speaker": 0, "session_id": session, "max_duration_ms": 400},
        )
        assert response.status_code == 200, response.text
        return int(response.headers["x-session-turns"])

    assert [turn("e2e-a"), turn("e2e-a"), turn("e2e-b"), turn("e2e-a")] == [1, 2, 1, 3]
    assert http.delete("/sessions/e2e-a").status_code == 204
    assert turn("e2e-a") == 1
    assert turn("e2e-b") == 2


def test_a_turn_whose_client_left_frees_its_session_at_once(http: httpx.Client) -> None:
    """The left turn releases the session's lease although Ray cancels what its request started:
    the next turn, sent at once, does not wait out the lease (30 s)."""
    body = json.dumps({"text": "Abandoned.", "session_id": "e2e-left", "max_duration_ms": 30_000}).encode()
    host, port = httpx.URL(str(http.base_url)).host, httpx.URL(str(http.base_url)).port
    with socket.create_connection((host, port)) as raw:
        raw.sendall(b"POST /contextual_speak HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(1.5)  # generating
    started = time.monotonic()
    response = http.post("/contextual_speak", json={"text": "Next.", "session_id": "e2e-left", "max_duration_ms": 400})
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 10
    assert response.headers["x-session-turns"] == "1"  # the left turn was not recorded


def test_seeded_request_is_cached_byte_identical(http: httpx.Client) -> None:
    body = {"text": "Cache me.", "speaker": 1, "seed": 1234, "max_duration_ms": 400}
    first = http.post("/speak", json=body)
    second = http.post("/speak", json=body)
    assert first.status_code == second.status_code == 200
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.content == second.content


def test_streaming_returns_several_chunks(http: httpx.Client) -> None:
    body = {
        "text": "Streaming through Ray.",
        "speaker": 0,
        "stream": True,
        "response_format": "pcm",
        "max_duration_ms": 800,
    }
    with http.stream("POST", "/speak", json=body) as response:
        assert response.status_code == 200
        chunks = [chunk for chunk in response.iter_raw() if chunk]
    pcm = np.frombuffer(b"".join(chunks), dtype="<i2")
    assert 0 < len(pcm) <= 0.8 * SAMPLE_RATE
    assert len(chunks) >= 2
    # The first chunk's way, hop by hop: the ingress's API → Ray → the replica's relay → its engine
    # process, and back; on one host every hop is a non-negative wall-clock gap.
    ms = {
        name.strip(): float(value)
        for name, value in (part.split(";dur=") for part in response.headers["server-timing"].split(","))
    }
    hops = ("in_relay", "in_engine", "out_engine", "out_relay")
    assert all(ms[hop] >= 0 for hop in hops), ms
    assert sum(ms[hop] for hop in hops) + ms["engine"] == pytest.approx(ms["api"], abs=2.0)


def test_openai_speech_streams_and_stops_when_the_client_leaves(
    http: httpx.Client,
    ray_serve: ServeInstance,
) -> None:
    # No length given: OpenAI's default allows a 60 s utterance, far more than this test waits for.
    body = {"model": "tts-1", "input": "OpenAI style speech.", "voice": "alloy", "response_format": "pcm"}
    with http.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("audio/pcm")
        raw = response.iter_raw()  # held: a dropped iterator would close the stream at once
        first = next(chunk for chunk in raw if chunk)
        assert len(first) % 2 == 0
        assert ray_serve.model_info()["running"] == 1
    # Leaving cancels the request down to the engine (proxy → ingress → handle → replica).
    deadline = time.monotonic() + 15
    while (info := ray_serve.model_info())["running"] + info["waiting"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert info["running"] == info["waiting"] == 0, info


def test_the_original_designs_client_works_unchanged(ray_serve: ServeInstance, tmp_path) -> None:
    """Its defaults ask for long audio (10 s speech, 20 s clone, 30 s dialogue): the tiny model, which
    never ends an utterance early, generates all of it, so this also bounds those lengths."""
    from tests.original_design_client import TTSClient as OriginalClient

    client = OriginalClient(ray_serve.base_url + "/")
    _assert_speech(client.speak("Hello, world!"), 10_000)
    reference = tmp_path / "reference_voice.wav"
    reference.write_bytes(base64.b64decode(_tone_b64()))
    _assert_speech(client.clone_voice("In the cloned voice.", str(reference), "The reference text."), 20_000)
    turns = [{"speaker": 0, "text": "Hello, how are you?", "pause_ms": 1000}, {"speaker": 1, "text": "Great!"}]
    _assert_speech(client.generate_conversation(turns), 30_000)
    wavs = client.batch_speak(["One.", "Two."], speaker=1)
    assert len(wavs) == 2 and all(len(_assert_speech(w, 10_000)) for w in wavs)
    with pytest.raises(Exception, match="TTS failed: 422"):
        client.speak("Hi", speaker=2)


def test_voices_lifecycle(http: httpx.Client) -> None:
    created = http.post(
        "/v1/voices", json={"name": "e2e", "audio_b64": _tone_b64(1.0), "transcript": "Hello."}
    )
    assert created.status_code == 201, created.text
    voice = created.json()
    assert voice["frames"] == int(np.ceil(SAMPLE_RATE * 1.0 / 1920))
    assert voice["id"] in {v["id"] for v in http.get("/v1/voices").json()["data"]}
    spoken = http.post(
        "/speak", json={"text": "In the saved voice.", "voice": voice["id"], "max_duration_ms": 400}
    )
    assert spoken.status_code == 200, spoken.text
    assert http.delete(f"/v1/voices/{voice['id']}").status_code == 204
    assert http.get(f"/v1/voices/{voice['id']}").status_code == 404
    assert http.get("/v1/models").status_code == 200


BAD_INPUT = [
    ("/speak", {"text": "x", "context": [{"text": "c", "speaker": 0, "audio_b64": "***not base64***"}]}, 400),
    (
        "/speak",
        {
            "text": "x",
            "context": [
                {"text": "c", "speaker": 0, "audio_b64": base64.b64encode(b"plain text " * 40).decode()}
            ],
        },
        400,
    ),
    ("/speak", {"text": "", "speaker": 0}, 422),
    ("/speak", {"text": "x", "speaker": 2}, 422),
    ("/batch_speak", {"texts": ["x"] * 11}, 422),
    ("/speak", {"text": "x" * 100_001}, 413),
    ("/clone_voice", {"text": "x", "reference_audio_b64": "", "reference_text": "y"}, 422),
    ("/v1/audio/speech", {"model": "tts-1", "input": "x", "voice": "nobody"}, 400),
    ("/v1/voices", {"name": "v", "audio_b64": "%%%", "transcript": "t"}, 400),
]


def test_bad_input_is_a_4xx_and_the_service_still_answers(http: httpx.Client) -> None:
    for path, body, status in BAD_INPUT:
        response = http.post(path, json=body)
        assert response.status_code == status, (path, body, response.text)
        assert response.json()["detail"]
    assert http.post("/speak", json={"text": "Still here.", "max_duration_ms": 400}).status_code == 200


async def _burst(base_url: str, n: int, body: dict[str, Any]) -> list[httpx.Response]:
    async with httpx.AsyncClient(
        base_url=base_url, timeout=TIMEOUT, limits=httpx.Limits(max_connections=n)
    ) as client:
        return await asyncio.gather(*(client.post("/speak", json=body) for _ in range(n)))


def test_routers_retry_a_full_model_replica_within_the_shipped_backoff(ray_serve: ServeInstance) -> None:
    """The config names no router options, so the model deployment's own hold: Ray's default backoff
    (up to 0.5 s) drains its queue at a few requests a second once a full replica frees its slots."""
    details = ray_serve.client.get_serve_details()
    (app,) = details["applications"].values()
    router = app["deployments"][MODEL_DEPLOYMENT]["deployment_config"]["request_router_config"]
    assert router["max_backoff_s"] == router["initial_backoff_s"] == MODEL_ROUTING_BACKOFF_S


def test_overload_answers_503_with_retry_after(ray_serve: ServeInstance) -> None:
    # One request in the replica and one queued: a burst of 12 must overflow.
    with ray_serve.deployment_options(MODEL_DEPLOYMENT, max_ongoing_requests=1, max_queued_requests=1):
        responses = asyncio.run(_burst(ray_serve.base_url, 12, {"text": "Busy.", "max_duration_ms": 400}))
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    for response in responses:
        if response.status_code == 503:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["detail"]
    with httpx.Client(base_url=ray_serve.base_url, timeout=TIMEOUT) as http:
        assert http.post("/speak", json={"text": "Calm again.", "max_duration_ms": 400}).status_code == 200

