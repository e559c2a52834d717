"""Saved voices: stored as codes on disk, usable from every endpoint, surviving a restart."""

import base64
import io
import json

import numpy as np
import pytest
import soundfile as sf

from serve_app.api.schemas import PREVIEW_TEXT
from serve_app.api.voices import VoiceStore
from serve_app.engine.types import SAMPLE_RATE
from serve_app.text.normalize import normalize_text
from tests.support_api import FakeEngine, make_client, read_wav, wav_b64, wav_bytes


def wav_bytes_of(pcm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


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


def test_a_voices_reference_is_required_and_the_callers_context_is_not(client, engine) -> None:
    """The engine drops the turns that do not fit its prompt, oldest first, but never a required one:
    a request that cannot hold its voice fails instead of speaking in another."""
    voice = _create(client)
    context = [{"text": "Earlier.", "speaker": 1, "audio_b64": wav_b64(0.5)}]
    r = client.post("/speak", json={"text": "Hi", "voice": voice["id"], "context": context})
    assert r.status_code == 200
    r = client.post("/contextual_speak", json={"text": "Hi", "voice": voice["id"], "session_id": "s"})
    assert r.status_code == 200
    r = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi", "voice": voice["id"]})
    assert r.status_code == 200
    inline = {"text": "Hi", "reference_audio_b64": wav_b64(1.0), "reference_text": "The reference."}
    assert client.post("/clone_voice", json=inline).status_code == 200
    assert client.post("/clone_voice", json={"text": "Hi", "voice": voice["id"]}).status_code == 200
    speak, contextual, openai, clone, saved_clone = engine.requests
    assert [turn.required for turn in speak.context] == [False, True]  # the caller's turn, then the voice
    for request in (contextual, openai, clone, saved_clone):
        assert request.context[-1].required and request.context[-1].text == "The reference."


def test_a_voice_id_with_edge_spaces_is_previewed_and_deleted_as_it_is_found(client, engine) -> None:
    voice = _create(client)
    padded = "%20" * 60 + voice["id"] + "%20"
    assert client.get(f"/v1/voices/{padded}").json()["id"] == voice["id"]
    r = client.post(f"/v1/voices/{padded}/preview")
    assert r.status_code == 200 and engine.requests[-1].context[-1].codes.shape == (13, 32)
    assert client.delete(f"/v1/voices/{padded}").status_code == 204
    assert client.get(f"/v1/voices/{voice['id']}").status_code == 404


def test_a_saved_voice_answers_to_its_name_where_no_other_has_it(client, engine) -> None:
    _create(client, name="Narrator", speaker=1)
    _create(client, name="Host")
    _create(client, name="host")
    assert client.post("/speak", json={"text": "Hi", "voice": "narrator", "speaker": 0}).status_code == 200
    assert engine.requests[-1].speaker == 1 and engine.requests[-1].context[-1].codes.shape == (13, 32)
    assert client.post("/speak", json={"text": "Hi", "voice": " NARRATOR "}).status_code == 200  # as " alloy"
    ambiguous = client.post("/speak", json={"text": "Hi", "voice": "Host"})
    assert ambiguous.status_code == 409 and "2 saved voices are named 'Host'" in ambiguous.json()["detail"]
    assert client.post("/speak", json={"text": "Hi", "voice": "nobody"}).status_code == 404
    assert client.get("/v1/voices/narrator").status_code == 404  # managing a voice takes its id
    openai = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi", "voice": "Narrator"})
    assert openai.status_code == 200
    unknown = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi", "voice": "nobody"})
    assert unknown.status_code == 400 and "unknown voice" in unknown.json()["error"]["message"]


def test_a_built_in_voice_name_cannot_be_taken_by_a_saved_voice(client) -> None:
    """A request naming it would always get the built-in voice: refused at creation instead."""
    r = client.post(
        "/v1/voices", json={"name": "Nova", "audio_b64": wav_b64(1.0), "transcript": "The reference."}
    )
    assert r.status_code == 409 and "built-in voice" in r.json()["detail"]


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


def test_a_reference_shorter_than_the_minimum_is_refused_with_its_length(client, engine) -> None:
    r = client.post("/v1/voices", json={"name": "tiny", "audio_b64": wav_b64(0.3), "transcript": "a"})
    assert r.status_code == 400
    assert r.json()["detail"] == (
        "audio_b64 is too short for a voice reference: 0.30 s of audio, at least 0.5 s is needed"
    )
    assert engine.encoded == [] and client.get("/v1/voices").json()["data"] == []


def test_a_silent_reference_is_refused(client, engine) -> None:
    silence = base64.b64encode(wav_bytes_of(np.zeros(SAMPLE_RATE, np.float32))).decode()
    r = client.post("/v1/voices", json={"name": "quiet", "audio_b64": silence, "transcript": "a"})
    assert r.status_code == 400 and "audio_b64 is silent" in r.json()["detail"]
    r = client.post(
        "/clone_voice",
        json={"text": "Hi", "reference_audio_b64": silence, "reference_text": "Nothing is said."},
    )
    assert r.status_code == 400 and "reference_audio_b64 is silent" in r.json()["detail"]
    assert engine.encoded == [] and engine.requests == []


def test_a_silent_reference_with_a_dc_offset_is_refused(client, engine) -> None:
    """A muted input on an interface with a DC bias: a constant level, no sound, no voice."""
    rng = np.random.default_rng(0)
    offset = (0.05 + 1e-4 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
    biased = base64.b64encode(wav_bytes_of(offset)).decode()
    r = client.post("/v1/voices", json={"name": "quiet", "audio_b64": biased, "transcript": "a"})
    assert r.status_code == 400 and "audio_b64 is silent" in r.json()["detail"]
    assert engine.encoded == []
    tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
    speech = base64.b64encode(wav_bytes_of((offset + tone).astype(np.float32))).decode()
    r = client.post(
        "/v1/voices",
        json={"name": "biased", "audio_b64": speech, "transcript": "a"},
    )
    assert r.status_code == 201, r.text


def test_a_reference_longer_than_the_maximum_is_refused(tmp_path, engine) -> None:
    client = make_client(tmp_path, engine, reference_max_seconds=2.0)
    r = client.post("/v1/voices", json={"name": "long", "audio_b64": wav_b64(2.5), "transcript": "a"})
    assert r.status_code == 413
    assert "too long for a voice reference: 2.5 s of audio, at most 2 s" in r.json()["detail"]
    r = client.post(
        "/clone_voice", json={"text": "Hi", "reference_audio_b64": wav_b64(2.5), "reference_text": "a"}
    )
    assert r.status_code == 413 and "reference_audio_b64 is too long" in r.json()["detail"]
    assert client.get("/health").status_code == 200


def test_a_short_clone_reference_is_refused_but_short_context_is_not(client, engine) -> None:
    r = client.post(
        "/clone_voice", json={"text": "Hi", "reference_audio_b64": wav_b64(0.2), "reference_text": "a"}
    )
    assert r.status_code == 400 and "reference_audio_b64 is too short" in r.json()["detail"]
    context = [{"text": "Yes.", "speaker": 0, "audio_b64": wav_b64(0.2)}]
    assert client.post("/speak", json={"text": "Hi", "context": context}).status_code == 200


def test_multipart_upload_makes_the_same_voice_as_json(client, engine) -> None:
    wav = wav_bytes(1.0)
    r = client.post(
        "/v1/voices",
        data={"name": "Form voice", "transcript": "The reference.", "speaker": "1"},
        files={"audio": ("reference.wav", wav, "audio/wav")},
    )
    assert r.status_code == 201, r.text
    voice = r.json()
    assert (voice["name"], voice["transcript"], voice["speaker"], voice["frames"]) == (
        "Form voice", "The reference.", 1, 13,
    )
    via_json = _create(client, name="Json voice", seconds=1.0, speaker=1)
    np.testing.assert_array_equal(engine.encoded[0], engine.encoded[1])  # same audio decoded
    assert via_json["frames"] == voice["frames"]
    # other servers' field names work too
    r = client.post(
        "/v1/voices",
        data={"name": "Alias", "reference_text": "The reference."},
        files={"file": ("reference.wav", wav, "audio/wav")},
    )
    assert r.status_code == 201 and r.json()["speaker"] == 0


@pytest.mark.parametrize(
    ("data", "files", "status", "message"),
    [
        ({"name": "x", "transcript": "t"}, None, 422, "an audio file is required"),
        ({"transcript": "t"}, {"audio": ("a.wav", b"", "audio/wav")}, 422, "Field required"),
        ({"name": "x", "transcript": "t", "speaker": "7"}, {"audio": ("a.wav", b"1", "audio/wav")}, 422,
         "less than or equal to 1"),
        ({"name": "x", "transcript": "t"}, {"audio": ("a.wav", b"", "audio/wav")}, 400, "audio is empty"),
        ({"name": "x", "transcript": "t", "speakr": "1"}, {"audio": ("a.wav", b"1", "audio/wav")}, 422,
         "Extra inputs are not permitted"),
        ({"name": "x", "transcript": "t"}, {"audio": ("a.txt", b"not audio" * 50, "text/plain")}, 400,
         "not audio in a supported format"),
    ],
)
def test_bad_multipart_uploads_say_what_is_wrong(client, data, files, status, message) -> None:
    r = client.post("/v1/voices", data=data, files=files or {"unrelated": ("x", b"", "text/plain")})
    assert r.status_code == status, r.text
    assert message in json.dumps(r.json()["detail"])


def test_a_multipart_file_over_the_audio_limit_is_413(tmp_path, engine) -> None:
    client = make_client(tmp_path, engine, max_audio_bytes=10_000)
    r = client.post(
        "/v1/voices",
        data={"name": "big", "transcript": "t"},
        files={"audio": ("a.wav", wav_bytes(1.0), "audio/wav")},
    )
    assert r.status_code == 413 and "audio is larger than the 10000-byte limit" in r.json()["detail"]


def test_other_content_types_are_415(client) -> None:
    r = client.post("/v1/voices", content=b"name=x", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]


def test_preview_speaks_the_sample_sentence_in_the_voice(client, engine) -> None:
    voice = _create(client, speaker=1)
    r = client.post(f"/v1/voices/{voice['id']}/preview")
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    [request] = engine.requests
    assert request.text == normalize_text(PREVIEW_TEXT) and request.speaker == 1
    assert request.context[-1].codes.shape == (13, 32)
    pcm, rate, _ = read_wav(r.content)
    assert rate == SAMPLE_RATE and len(pcm) == engine.frames_for(request) * 1920
    r = client.post(
        f"/v1/voices/{voice['id']}/preview", json={"text": "Custom line.", "output_format": "mp3_22050_32"}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg"
    assert engine.requests[-1].text == "Custom line."
    assert client.post("/v1/voices/voice_0000000000000000/preview").status_code == 404


def test_store_round_trips_codes_and_leaves_no_temp_files(tmp_path) -> None:
    store = VoiceStore(tmp_path)
    codes = np.arange(64, dtype=np.int64).reshape(2, 32)
    info = store.create("x", "text", 1, codes)
    np.testing.assert_array_equal(store.get(info.id).codes, codes)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert store.get("voice_../../x") is None


def test_a_full_voice_store_refuses_new_voices_until_one_is_deleted(tmp_path, engine) -> None:
    client = make_client(tmp_path, engine, max_saved_voices=2)
    first, _ = _create(client, "A"), _create(client, "B")
    r = client.post("/v1/voices", json={"name": "C", "audio_b64": wav_b64(1.0), "transcript": "t"})
    assert r.status_code == 409 and "2 voices are saved" in r.json()["detail"]
    assert len(engine.encoded) == 2  # refused before its audio was encoded
    assert client.delete(f"/v1/voices/{first['id']}").status_code == 204
    _create(client, "C")


def test_the_listing_follows_other_replicas_and_is_read_once_while_unchanged(tmp_path, monkeypatch) -> None:
    import os
    import time

    mine, theirs = VoiceStore(tmp_path), VoiceStore(tmp_path)  # two replicas sharing one directory
    codes = np.zeros((2, 32), dtype=np.int64)
    assert mine.list() == []
    voice = theirs.create("x", "text", 1, codes)
    assert [v.id for v in mine.list()] == [voice.id]  # the directory changed: read again
    reads = []
    read = VoiceStore.info
    monkeypatch.setattr(VoiceStore, "info", lambda self, voice_id: reads.append(voice_id) or read(self, voice_id))
    mine.list()
    assert reads == [voice.id]  # changed within the mtime's granularity: not trusted yet
    past = time.time_ns() - 10_000_000_000
    os.utime(tmp_path, ns=(past, past))
    mine.list()
    reads.clear()
    assert [v.id for v in mine.list()] == [voice.id] and reads == []  # unchanged: from memory
    monkeypatch.undo()
    theirs.delete(voice.id)
    assert mine.list() == []


def test_upload_preview_and_refusals_over_real_http(tmp_path) -> None:
    """A form upload as `curl -F` sends it, its preview, and a silent recording refused, on uvicorn."""
    import httpx

    from serve_app.api.app import create_app
    from serve_app.api.settings import ApiSettings
    from tests.support_api import serve_over_http

    engine = FakeEngine()
    with serve_over_http(create_app(engine, ApiSettings(voices_dir=tmp_path))) as base_url:
        r = httpx.post(
            f"{base_url}/v1/voices",
            data={"name": "Curl voice", "transcript": "The reference."},
            files={"audio": ("reference.wav", wav_bytes(1.0), "audio/wav")},
        )
        assert r.status_code == 201, r.text
        voice = r.json()
        r = httpx.post(f"{base_url}/v1/voices/{voice['id']}/preview", json={"output_format": "pcm_16000"})
        assert r.status_code == 200 and r.headers["content-type"] == "audio/pcm"
        samples = engine.frames_for(engine.requests[-1]) * 1920 * 16000 // SAMPLE_RATE
        assert len(r.content) == 2 * samples  # 16-bit at 16 kHz
        silence = wav_bytes_of(np.zeros(SAMPLE_RATE, np.float32))
        r = httpx.post(
            f"{base_url}/v1/voices",
            data={"name": "Quiet", "transcript": "Nothing."},
            files={"audio": ("quiet.wav", silence, "audio/wav")},
        )
        assert r.status_code == 400 and r.json()["detail"].startswith("audio is silent")
        assert [v["id"] for v in httpx.get(f"{base_url}/v1/voices").json()["data"]] == [voice["id"]]


def test_with_api_keys_each_key_sees_uses_and_deletes_only_its_own_voices(tmp_path) -> None:
    """A voice saved with one key is not listed, named, used (HTTP or WebSocket) or deleted with
    another: each key's voices are a store of their own; without keys every caller shares one."""
    alpha, beta = "alpha-key-0123456789", "beta-key-9876543210"
    client = make_client(tmp_path, api_keys=f"{alpha},{beta}")
    as_alpha, as_beta = {"Authorization": f"Bearer {alpha}"}, {"Authorization": f"Bearer {beta}"}
    created = client.post(
        "/v1/voices",
        headers=as_alpha,
        json={"name": "Narrator", "audio_b64": wav_b64(1.0), "transcript": "The reference.", "speaker": 1},
    )
    assert created.status_code == 201, created.text
    voice = created.json()

    def ids(headers: dict[str, str], path: str = "/v1/voices") -> list[str]:
        return [v["id"] for v in client.get(path, headers=headers).json()["data"] if v["id"].startswith("voice_")]

    assert ids(as_alpha) == [voice["id"]] and ids(as_beta) == []
    assert ids(as_alpha, "/v1/audio/voices") == [voice["id"]] and ids(as_beta, "/v1/audio/voices") == []
    for name in (voice["id"], "Narrator"):  # neither its id nor its name reaches another key's voices
        assert client.post("/speak", headers=as_beta, json={"text": "Hi", "voice": name}).status_code == 404
        assert client.post("/speak", headers=as_alpha, json={"text": "Hi", "voice": name}).status_code == 200
    r = client.post("/v1/audio/speech", headers=as_beta, json={"model": "tts-1", "input": "Hi", "voice": voice["id"]})
    assert r.status_code == 404
    assert client.get(f"/v1/voices/{voice['id']}", headers=as_beta).status_code == 404
    assert client.post(f"/v1/voices/{voice['id']}/preview", headers=as_beta).status_code == 404
    with client.websocket_connect(f"/v1/audio/speech/stream?api_key={beta}") as ws:
        ws.send_json({"type": "text", "context_id": "c", "text": "Hello there.", "voice": voice["id"]})
        ws.send_json({"type": "close", "context_id": "c"})
        reply = ws.receive_json()
    assert reply["type"] == "error" and "not found" in reply["message"], reply
    assert client.delete(f"/v1/voices/{voice['id']}", headers=as_beta).status_code == 404
    assert ids(as_alpha) == [voice["id"]], "another key's delete left it in place"
    assert client.delete(f"/v1/voices/{voice['id']}", headers=as_alpha).status_code == 204
    assert ids(as_alpha) == []


def test_a_store_files_each_owners_voices_apart_and_rejects_other_names(tmp_path) -> None:
    store = VoiceStore(tmp_path / "voices")
    codes = np.zeros((2, 32), dtype=np.int64)
    mine = store.owned_by("key_0123456789ab").create("Mine", "t", 0, codes)
    shared = store.create("Shared", "t", 0, codes)
    assert [v.id for v in store.list()] == [shared.id]
    assert [v.id for v in store.owned_by("key_0123456789ab").list()] == [mine.id]
    assert store.owned_by("key_0123456789ab") is store.owned_by("key_0123456789ab")
    assert store.owned_by(None) is store
    for bad in ("../x", "key_0123", "addr_1.2.3.4"):
        with pytest.raises(ValueError, match="invalid voice owner"):
            store.owned_by(bad)
