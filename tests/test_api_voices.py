"""Saved voices: stored as codes on disk, usable from every endpoint, surviving a restart."""

import json

import numpy as np

from serve_app.api.voices import VoiceStore
from tests.support_api import FakeEngine, make_client, wav_b64


def _create(client, name="Narrator", seconds=1.0, speaker=0):
    r = client.post(
        "/v1/voices",
        json={
            "name": name,
            "audio_b64": wav_b64(seconds),
            "transcript": "The reference.",
            "speaker": speaker,
        },
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_create_encodes_reference_once_into_codes(client, engine, tmp_path) -> None:
    voice = _create(client, seconds=1.0)
    assert voice["frames"] == 13  # ceil(24000 / 1920)
    assert voice["duration_ms"] == 13 * 80
    [pcm] = engine.encoded
    assert len(pcm) == 24_000
    files = sorted(p.name for p in (tmp_path / "voices").iterdir())
    assert files == [f"{voice['id']}.json", f"{voice['id']}.npz"]
    assert json.loads((tmp_path / "voices" / f"{voice['id']}.json").read_text())["name"] == "Narrator"


def test_list_get_delete(client) -> None:
    a, b = _create(client, "A"), _create(client, "B")
    listed = client.get("/v1/voices").json()
    assert listed["object"] == "list" and [v["id"] for v in listed["data"]] == [a["id"], b["id"]]
    assert client.get(f"/v1/voices/{a['id']}").json() == a
    assert client.delete(f"/v1/voices/{a['id']}").status_code == 204
    assert client.get(f"/v1/voices/{a['id']}").status_code == 404
    assert client.delete(f"/v1/voices/{a['id']}").status_code == 404
    assert [v["id"] for v in client.get("/v1/voices").json()["data"]] == [b["id"]]


def test_voice_is_used_by_speak_clone_and_openai(client, engine) -> None:
    voice = _create(client, speaker=1)
    assert client.post("/speak", json={"text": "Hi", "voice": voice["id"], "speaker": 0}).status_code == 200
    assert client.post("/clone_voice", json={"text": "Hi", "voice": voice["id"]}).status_code == 200
    r = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi", "voice": voice["id"]})
    assert r.status_code == 200
    r = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi", "voice": {"id": voice["id"]}})
    assert r.status_code == 200
    assert len(engine.requests) == 4
    for request in engine.requests:
        reference = request.context[-1]
        assert request.speaker == 1 and reference.speaker == 1  # the voice's speaker wins
        assert reference.text == "The reference." and reference.audio is None
        assert reference.codes.shape == (13, 32)
    assert len(engine.encoded) == 1  # encoded once at creation, never again


def test_voices_survive_recreating_the_app(tmp_path, engine) -> None:
    voice = _create(make_client(tmp_path, engine))
    fresh = make_client(tmp_path, FakeEngine())
    assert [v["id"] for v in fresh.get("/v1/voices").json()["data"]] == [voice["id"]]
    assert fresh.post("/speak", json={"text": "Hello again", "voice": voice["id"]}).status_code == 200


def test_unknown_voice_is_404_everywhere(client) -> None:
    assert client.post("/speak", json={"text": "Hi", "voice": "voice_0000000000000000"}).status_code == 404
    assert (
        client.post("/clone_voice", json={"text": "Hi", "voice": "voice_0000000000000000"}).status_code == 404
    )
    r = client.post(
        "/v1/audio/speech", json={"model": "tts-1", "input": "Hi", "voice": "voice_0000000000000000"}
    )
    assert r.status_code == 404 and "not found" in r.json()["error"]["message"]
    assert client.get("/v1/voices/..%2F..%2Fetc").status_code == 404


def test_reference_shorter_than_a_frame_is_still_one_frame(client) -> None:
    r = client.post("/v1/voices", json={"name": "tiny", "audio_b64": wav_b64(0.01), "transcript": "a"})
    assert r.status_code == 201 and r.json()["frames"] == 1


def test_store_round_trips_codes_and_leaves_no_temp_files(tmp_path) -> None:
    store = VoiceStore(tmp_path)
    codes = np.arange(64, dtype=np.int64).reshape(2, 32)
    info = store.create("x", "text", 1, codes)
    np.testing.assert_array_equal(store.get(info.id).codes, codes)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert store.get("voice_../../x") is None
