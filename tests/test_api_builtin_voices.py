"""Built-in voices: a name gives the same reference prompt on every request and every replica."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve_app.api.app import create_app
from serve_app.api.settings import ApiSettings
from tests.support_api import FakeEngine, make_client, wav_bytes


def _anchors(engine: FakeEngine) -> list:
    return [q for q in engine.requests if q.request_id and q.request_id.startswith("voice-")]


def test_a_built_in_voice_is_made_once_and_heard_by_every_request(tmp_path) -> None:
    engine = FakeEngine()
    client = make_client(tmp_path, engine)
    for text in ("First request.", "Second request, same voice."):
        r = client.post("/speak", json={"text": text, "voice": "nova", "max_duration_ms": 2000})
        assert r.status_code == 200, r.text
    [anchor] = _anchors(engine)
    assert anchor.speaker == 1 and anchor.sampling.seed is not None
    first, second = [q for q in engine.requests if q is not anchor]
    assert first.speaker == second.speaker == 1
    assert first.context[-1].text == second.context[-1].text == anchor.text
    np.testing.assert_array_equal(first.context[-1].codes, second.context[-1].codes)
    np.testing.assert_array_equal(first.context[-1].codes, engine.results[0].codes)  # the anchor's own codes
    assert engine.encoded == []  # nothing was encoded, let alone per request


def test_voice_names_are_shared_by_speak_and_openai(tmp_path) -> None:
    engine = FakeEngine()
    client = make_client(tmp_path, engine)
    client.post("/speak", json={"text": "Via speak.", "voice": "alloy"})
    client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Via OpenAI.", "voice": "ALLOY"})
    assert len(_anchors(engine)) == 1
    speak, openai = [q for q in engine.requests if q.request_id != "voice-alloy"]
    np.testing.assert_array_equal(speak.context[-1].codes, openai.context[-1].codes)
    assert client.post("/speak", json={"text": "Hi", "voice": "nobody"}).status_code == 404


def test_voices_are_listed_with_their_fingerprints(tmp_path) -> None:
    client = make_client(tmp_path)
    upload = {"name": "mine", "audio_b64": base64.b64encode(wav_bytes()).decode(), "transcript": "Hi."}
    saved = client.post("/v1/voices", json=upload).json()
    before = {v["id"]: v for v in client.get("/v1/audio/voices").json()["data"]}
    assert {"0", "1", "alloy", "nova", "shimmer", saved["id"]} <= set(before)
    assert before["nova"]["type"] == "builtin" and before["nova"]["speaker"] == 1
    assert before["nova"]["ready"] is False and before["nova"]["fingerprint"] is None
    assert before[saved["id"]]["type"] == "saved" and before[saved["id"]]["source"] == "upload"
    client.post("/speak", json={"text": "Warm it up.", "voice": "nova"})
    after = {v["id"]: v for v in client.get("/v1/audio/voices").json()["data"]}
    assert after["nova"]["ready"] is True and len(after["nova"]["fingerprint"]) == 16
    assert after["alloy"]["ready"] is False


def test_a_catalogue_clip_is_encoded_once(tmp_path) -> None:
    (tmp_path / "narrator.wav").write_bytes(wav_bytes(1.0))
    catalog = tmp_path / "voices.yaml"
    catalog.write_text(
        "voices:\n"
        "  narrator: {speaker: 0, clip: narrator.wav, transcript: 'The clip says this.'}\n"
        "  host: {speaker: 1, seed: 42}\n"
    )
    engine = FakeEngine()
    client = make_client(tmp_path, engine, voices_catalog=catalog)
    for _ in range(2):
        assert client.post("/speak", json={"text": "Read this.", "voice": "narrator"}).status_code == 200
    assert len(engine.encoded) == 1 and len(engine.encoded[0]) == 24_000
    speech = [q for q in engine.requests if not (q.request_id or "").startswith("voice-")]
    assert all(q.context[-1].text == "The clip says this." and q.speaker == 0 for q in speech)
    listed = {v["id"]: v for v in client.get("/v1/audio/voices").json()["data"]}
    assert listed["narrator"]["source"] == "clip" and listed["host"]["source"] == "seeded"


@pytest.mark.parametrize(
    ("catalog", "message"),
    [
        ("voices: {x: {seed: 1}}", "needs at least a speaker"),
        ("voices: {x: {speaker: 0, clip: a.wav}}", "no transcript"),
        ("voices: {x: {speaker: 3}}", "speaker must be 0 or 1"),
        ("voices: {x: {speaker: 0, pitch: 2}}", "unknown fields"),
    ],
)
def test_a_bad_catalogue_fails_at_start(tmp_path, catalog: str, message: str) -> None:
    path = tmp_path / "voices.yaml"
    path.write_text(catalog)
    with pytest.raises(ValueError, match=message):
        create_app(FakeEngine(), ApiSettings(voices_dir=tmp_path / "v", voices_catalog=path))


class CountingEngine:
    """A real engine, counting the generations asked of it."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.generations = 0

    def __getattr__(self, name: str):
        return getattr(self.engine, name)

    async def generate(self, request):
        self.generations += 1
        return await self.engine.generate(request)


def _fingerprints(client: TestClient) -> dict[str, str | None]:
    return {v["id"]: v["fingerprint"] for v in client.get("/v1/audio/voices").json()["data"]}


def test_replicas_agree_on_a_voice_whether_they_share_the_store_or_not(tmp_path: Path) -> None:
    """Ingress replicas are separate apps: with separate stores each generates the anchor itself (the
    engine's seeded sampling gives the same codes); with a shared store the second one only reads it."""
    from serve_app.engine.engine import Engine

    engine = Engine.from_preset("tiny-random")
    try:
        counted = CountingEngine(engine)

        def replica(voices_dir: Path) -> TestClient:
            settings = ApiSettings(voices_dir=voices_dir, builtin_voice_ms=800)
            return TestClient(create_app(counted, settings), raise_server_exceptions=False)

        one, two, three = replica(tmp_path / "a"), replica(tmp_path / "b"), replica(tmp_path / "a")
        body = {"text": "Same voice everywhere.", "voice": "echo", "max_duration_ms": 400}
        for client in (one, two):
            assert client.post("/speak", json=body).status_code == 200
        assert counted.generations == 4  # an anchor and a speech for each
        assert three.post("/speak", json=body).status_code == 200
        assert counted.generations == 5  # the anchor came from the shared store
        prints = [_fingerprints(c)["echo"] for c in (one, two, three)]
        assert prints[0] is not None and len(set(prints)) == 1
        a = asyncio.run(one.app.state.services.synth.builtin.get("echo", one.app.state.services.synth))
        b = asyncio.run(two.app.state.services.synth.builtin.get("echo", two.app.state.services.synth))
        np.testing.assert_array_equal(a.codes, b.codes)
        assert len(a.codes) == 10  # 800 ms: the tiny model never ends an utterance early
    finally:
        engine.close()
