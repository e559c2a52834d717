"""/conversation and /contextual_speak: earlier turns become context as text + generated codes."""

import numpy as np
import pytest

from serve_app.engine.types import SAMPLE_RATE
from tests.support_api import SilentModel, make_client, read_wav, wav_b64


@pytest.fixture
def client(tmp_path, engine):
    return make_client(tmp_path, engine, session_context_turns=2)


TURNS = [
    {"speaker": 0, "text": "Hello, how are you today?", "pause_ms": 1000},
    {"speaker": 1, "text": "I'm doing great, thanks for asking!", "pause_ms": 800},
    {"speaker": 0, "text": "That's wonderful to hear.", "pause_ms": 500},
]


def test_conversation_passes_generated_codes_as_context(client, engine) -> None:
    r = client.post("/conversation", json={"turns": TURNS, "max_total_duration_ms": 30_000})
    assert r.status_code == 200
    assert len(engine.requests) == 3
    for i, request in enumerate(engine.requests):
        assert [s.speaker for s in request.context] == [t["speaker"] for t in TURNS[:i]]
        for segment, earlier in zip(request.context, engine.results[:i]):
            assert segment.audio is None  # never re-encoded audio
            np.testing.assert_array_equal(segment.codes, earlier.codes)
        assert [s.text for s in request.context] == [q.text for q in engine.requests[:i]]


def test_conversation_audio_is_turns_with_pauses_between(client, engine) -> None:
    r = client.post("/conversation", json={"turns": TURNS})
    pcm, rate, channels = read_wav(r.content)
    assert (rate, channels) == (SAMPLE_RATE, 1)
    speech = [len(a.pcm) for a in engine.results]
    pauses = [1000 * SAMPLE_RATE // 1000, 800 * SAMPLE_RATE // 1000]  # none after the last turn
    assert len(pcm) == sum(speech) + sum(pauses)
    first_pause = pcm[speech[0] : speech[0] + pauses[0]]
    assert np.all(first_pause == 0)
    assert r.headers["x-finish-reason"] == "end_of_audio"  # every turn ended by itself


def test_a_pause_between_turns_is_the_silence_asked_for(tmp_path) -> None:
    """A turn's own trailing silence is not kept before its pause (1000 ms came out as 1400)."""
    from tests.test_api_longform import RecordingEngine

    engine = RecordingEngine(silent_tail_frames=5)
    client = make_client(tmp_path, engine, join_silence_ms=400)
    pcm, _, _ = read_wav(client.post("/conversation", json={"turns": TURNS[:2]}).content)
    first = engine.frames_for(engine.requests[0]) * 1920
    zeros = np.flatnonzero(pcm[first - 1 :] != 0)[1] - 1  # the exact-zero run after the first turn's speech
    assert SAMPLE_RATE <= zeros < SAMPLE_RATE + 24  # 1000 ms (the fade-out's last samples round to 0)


def test_conversation_stays_within_total_duration(client, engine) -> None:
    turns = [{"speaker": i % 2, "text": "word " * 40, "pause_ms": 500} for i in range(4)]
    r = client.post("/conversation", json={"turns": turns, "max_total_duration_ms": 5000})
    pcm, rate, _ = read_wav(r.content)
    assert len(pcm) / rate <= 5.0
    assert all(q.max_audio_length_ms <= 5000 - 3 * 500 for q in engine.requests)
    assert r.headers["x-finish-reason"] == "length"


def test_conversation_pauses_must_leave_room_for_speech(client) -> None:
    turns = [{"speaker": 0, "text": "hi", "pause_ms": 2000}] * 4
    r = client.post("/conversation", json={"turns": turns, "max_total_duration_ms": 5000})
    assert r.status_code == 422 and "pauses" in r.json()["detail"]


def test_a_conversation_whose_turns_make_no_audio_is_an_empty_file(tmp_path) -> None:
    client = make_client(tmp_path, SilentModel())
    turns = [{"speaker": 0, "text": "Hm.", "pause_ms": 0}, {"speaker": 1, "text": "Oh."}]
    r = client.post("/conversation", json={"turns": turns})
    assert r.status_code == 200, r.text  # a 500 before: nothing to concatenate
    pcm, rate, _ = read_wav(r.content)
    assert len(pcm) == 0 and rate == SAMPLE_RATE


def test_conversation_turn_limit(tmp_path) -> None:
    client = make_client(tmp_path, max_conversation_turns=2)
    r = client.post("/conversation", json={"turns": TURNS})
    assert r.status_code == 413 and "turns" in r.json()["detail"]


def _say(client, session: str, text: str, speaker: int = 0):
    r = client.post("/contextual_speak", json={"text": text, "speaker": speaker, "session_id": session})
    assert r.status_code == 200, r.text
    return r


def test_sessions_keep_last_turns_as_codes(client, engine) -> None:
    for i, text in enumerate(["first", "second", "third", "fourth"]):
        _say(client, "alpha", text, speaker=i % 2)
    contexts = [[s.text for s in q.context] for q in engine.requests]
    assert contexts == [[], ["first"], ["first", "second"], ["second", "third"]]  # last N = 2
    np.testing.assert_array_equal(engine.requests[3].context[1].codes, engine.results[2].codes)
    assert [s.speaker for s in engine.requests[3].context] == [1, 0]


def test_sessions_are_isolated_and_resettable(client, engine) -> None:
    _say(client, "alpha", "alpha one")
    _say(client, "beta", "beta one")
    _say(client, "alpha", "alpha two")
    assert [s.text for s in engine.requests[1].context] == []
    assert [s.text for s in engine.requests[2].context] == ["alpha one"]

    assert client.delete("/sessions/alpha").status_code == 204
    assert client.delete("/sessions/never-used").status_code == 204  # idempotent
    _say(client, "alpha", "alpha again")
    _say(client, "beta", "beta two")
    assert [s.text for s in engine.requests[3].context] == []
    assert [s.text for s in engine.requests[4].context] == ["beta one"]


def test_a_turn_without_a_session_id_continues_its_callers_own_session(tmp_path, engine) -> None:
    """The original design's body (no session_id, an empty context): one session per API key, never
    one shared by every caller; its id comes back to reset it with."""
    client = make_client(tmp_path, engine, api_keys="key-one,key-two", session_context_turns=2)
    one, two = ({"authorization": f"Bearer {key}"} for key in ("key-one", "key-two"))
    design = {"text": "First.", "speaker": 1, "context": [], "max_duration_ms": 800}
    first = client.post("/contextual_speak", json=design, headers=one)
    assert first.status_code == 200, first.text
    assert client.post("/contextual_speak", json={"text": "Other caller."}, headers=two).status_code == 200
    again = client.post("/contextual_speak", json={"text": "Second.", "context": None}, headers=one)
    assert [[s.text for s in q.context] for q in engine.requests] == [[], [], ["First."]]
    session = again.headers["x-session-id"]
    assert session == first.headers["x-session-id"] != client.post(
        "/contextual_speak", json={"text": "Again."}, headers=two
    ).headers["x-session-id"]
    assert "key-one" not in session  # the key's fingerprint, never the key
    assert client.delete(f"/sessions/{session}", headers=one).status_code == 204
    client.post("/contextual_speak", json={"text": "Fresh."}, headers=one)
    assert engine.requests[-1].context == []
    turn = {"text": "c", "speaker": 0, "audio_b64": wav_b64(0.2)}
    refused = client.post("/contextual_speak", json={"text": "Hi", "context": [turn]}, headers=one)
    assert refused.status_code == 422 and "send earlier turns to /speak" in refused.text


def test_an_api_keys_sessions_are_its_own_whatever_id_another_key_sends(tmp_path, engine) -> None:
    """Session ids are the callers' to choose (and a default one holds a key's public fingerprint):
    where the server takes keys, another key naming the same id gets a session of its own, and
    cannot reset this one."""
    client = make_client(tmp_path, engine, api_keys="key-one,key-two", session_context_turns=2)
    one, two = ({"authorization": f"Bearer {key}"} for key in ("key-one", "key-two"))
    turn = {"text": "A private line.", "session_id": "call-42", "max_duration_ms": 800}
    first = client.post("/contextual_speak", json=turn, headers=one)
    assert first.status_code == 200 and first.headers["x-session-id"] == "call-42"
    other = client.post("/contextual_speak", json={**turn, "text": "Someone else."}, headers=two)
    assert other.status_code == 200 and other.headers["x-session-turns"] == "1"
    assert engine.requests[-1].context == []  # nothing of key one's turn
    default = client.post("/contextual_speak", json={"text": "Mine."}, headers=one).headers["x-session-id"]
    client.post("/contextual_speak", json={"text": "Theirs.", "session_id": default}, headers=two)
    assert engine.requests[-1].context == []
    assert client.delete("/sessions/call-42", headers=two).status_code == 204  # resets key two's only
    client.post("/contextual_speak", json={**turn, "text": "Still here?"}, headers=one)
    assert [s.text for s in engine.requests[-1].context] == ["A private line."]


def test_a_session_speaks_in_a_saved_voice(client, engine) -> None:
    """An agent's turns keep its voice: the reference comes after the session's turns, every turn."""
    voice = client.post(
        "/v1/voices", json={"name": "Agent", "audio_b64": wav_b64(0.5), "transcript": "Agent voice.", "speaker": 1}
    ).json()["id"]
    for text in ("Hello.", "How can I help?"):
        r = client.post("/contextual_speak", json={"text": text, "session_id": "agent", "voice": voice, "speaker": 0})
        assert r.status_code == 200, r.text
    first, second = engine.requests
    assert [s.text for s in first.context] == ["Agent voice."]
    assert [s.text for s in second.context] == ["Hello.", "Agent voice."]
    assert first.speaker == second.speaker == 1 and second.context[0].speaker == 1
    assert client.post("/contextual_speak", json={"text": "Hi", "voice": "nobody"}).status_code == 404


def test_session_id_is_validated(client) -> None:
    r = client.post("/contextual_speak", json={"text": "hi", "session_id": "../etc/passwd"})
    assert r.status_code == 422
    assert client.delete("/sessions/has%20space").status_code == 422  # as for a turn
    assert client.delete("/sessions/call-42").status_code == 204
