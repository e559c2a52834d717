"""Long-form speech over the API: segments, rolling context, joins, budgets, pauses and the lexicon."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import numpy as np
import pytest

from serve_app.engine.types import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    AudioChunk,
    EngineOverloadedError,
    GenerationRequest,
)
from serve_app.text.normalize import normalize_text
from tests.support_api import FakeEngine, make_client, on_event_loop, read_wav

SENTENCES = [
    "The lighthouse keeper climbed the stairs at dusk, as he had done for forty years.",
    "Below him the sea was grey and restless, and the wind carried the smell of rain.",
    "He trimmed the wick, polished the great lens, and waited for the dark to come.",
    "Somewhere out there a small boat was making for the harbour, late and alone.",
    "When the light finally turned, its beam swept across the water like a slow hand.",
]
LONG_TEXT = " ".join(SENTENCES[i % len(SENTENCES)] for i in range(38))[:3000]


class RecordingEngine(FakeEngine):
    """The fake engine, also keeping the codes and PCM each stream handed out."""

    def __init__(self, silent_tail_frames: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.silent_tail_frames = silent_tail_frames
        self.streamed: list[tuple[np.ndarray, np.ndarray]] = []

    def _make(self, request: GenerationRequest) -> tuple[np.ndarray, np.ndarray]:
        pcm, codes = super()._make(request)
        if self.silent_tail_frames:
            pcm = np.concatenate([pcm, np.zeros(self.silent_tail_frames * FRAME_SAMPLES, np.float32)])
            codes = np.concatenate([codes, codes[: self.silent_tail_frames]])
        return pcm, codes

    async def stream(self, request: GenerationRequest) -> AsyncIterator[AudioChunk]:
        pcm, codes = [], []
        try:
            async for chunk in super().stream(request):
                pcm.append(chunk.pcm)
                codes.append(chunk.codes)
                yield chunk
        finally:
            self.streamed.append((np.concatenate(pcm), np.concatenate(codes)))


@pytest.fixture
def engine() -> RecordingEngine:
    return RecordingEngine()


@pytest.fixture
def client(tmp_path, engine):
    return make_client(tmp_path, engine)


def _pcm16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<i2").astype(np.float32) / 32767


def test_a_3000_character_text_streams_as_one_recording_each_segment_hearing_the_last(client, engine) -> None:
    assert len(LONG_TEXT) == 3000
    body = {"text": LONG_TEXT, "speaker": 0, "stream": True, "response_format": "pcm", "seed": 3}
    with client.stream("POST", "/speak", json=body) as r:
        assert r.status_code == 200
        audio = _pcm16(b"".join(r.iter_bytes()))

    requests = engine.requests
    assert len(requests) >= 11  # 3000 characters, at most 280 per segment
    assert all(len(q.text) <= 300 for q in requests)
    # The segments are the text, in order, normalized.
    assert " ".join(q.text for q in requests) == normalize_text(LONG_TEXT)
    assert requests[0].context == []
    for i in range(1, len(requests)):
        context = requests[i].context
        assert 1 <= len(context) <= 3
        assert all(s.audio is None for s in context)  # generated codes, never re-encoded audio
        previous = context[-1]
        assert previous.text == requests[i - 1].text
        np.testing.assert_array_equal(previous.codes, engine.streamed[i - 1][1])
        if i >= 2:
            assert context[-2].text == requests[i - 2].text
        assert requests[i].sampling.seed == 3 + i  # each segment its own seed, all derived from the request's

    # One continuous recording: every generated sample, in order, nothing between the segments ...
    lengths = [len(pcm) for pcm, _ in engine.streamed]
    assert len(audio) == sum(lengths)
    # ... and no click where one segment's audio meets the next one's.
    joins = np.cumsum(lengths)[:-1]
    raw = np.concatenate([pcm for pcm, _ in engine.streamed])
    assert max(abs(raw[j] - raw[j - 1]) for j in joins) > 0.05  # the segments alone would click
    assert max(abs(audio[j] - audio[j - 1]) for j in joins) < 0.01
    inner = np.ones(len(audio), bool)
    for j in joins:
        inner[j - 240 : j + 240] = False
    np.testing.assert_allclose(audio[inner], raw[inner], atol=1e-4)  # untouched away from the joins


def test_the_whole_text_as_one_file_matches_its_stream(client, engine) -> None:
    body = {"text": LONG_TEXT[:900], "speaker": 1, "seed": 5, "response_format": "wav"}
    whole = client.post("/speak", json=body)
    assert whole.status_code == 200 and whole.headers["x-finish-reason"] == "end_of_audio"
    with client.stream("POST", "/speak", json={**body, "stream": True}) as r:
        streamed = b"".join(r.iter_bytes())
    pcm_whole, _, _ = read_wav(whole.content)
    pcm_streamed = _pcm16(streamed[44:])
    assert len(engine.requests) >= 6  # two requests of three or more segments
    np.testing.assert_array_equal(np.round(pcm_whole * 32767), np.round(pcm_streamed * 32767))


def test_max_duration_applies_to_the_whole_and_the_final_event_says_length(client, engine) -> None:
    body = {"text": LONG_TEXT, "stream": True, "stream_format": "sse", "response_format": "pcm"}
    body["max_duration_ms"] = 4000
    r = client.post("/speak", json=body)
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["finish_reason"] == "length"
    assert events[-1]["usage"] == {"input_characters": 3000, "output_audio_seconds": len(audio) / 2 / SAMPLE_RATE}
    assert 0 < len(audio) // 2 <= 4 * SAMPLE_RATE
    assert sum(q.max_audio_length_ms for q in engine.requests) <= 4000 + 80 * len(engine.requests)
    assert len(engine.requests) < 11  # the text was not all spoken


def test_a_lexicon_entry_that_stands_for_a_paragraph_is_spoken_in_segments(tmp_path) -> None:
    """The lexicon may turn a short segment into thousands of characters: it is cut again, so no
    segment is over the model's limit (before, the second one failed after the stream began)."""
    engine = FakeEngine(max_prompt_chars=600)
    client = make_client(tmp_path, engine)
    paragraph = " ".join(SENTENCES)  # 400 characters
    body = {"text": 'Hi there. <break time="100ms"/> Q Q Q Q Q.', "lexicon": {"Q": paragraph}, "stream": True}
    with client.stream("POST", "/speak", json=body) as r:
        assert r.status_code == 200
        b"".join(r.iter_bytes())
    spoken = [q.text for q in engine.requests]
    assert spoken[0] == "Hi there." and max(len(t) for t in spoken) <= 600 and len(spoken) >= 4
    assert " ".join(spoken[1:]).split() == " ".join([paragraph] * 5 + ["."]).replace(" .", ".").split()


def test_a_segment_that_fails_after_the_first_audio_ends_the_sse_stream_with_its_error(tmp_path) -> None:
    """Once the first event is sent, the status cannot change: the error comes as an event, and the
    done event says `error`."""
    engine = FakeEngine(max_prompt_chars=60)
    client = make_client(tmp_path, engine)
    body = {"text": f'Short one. <break time="100ms"/> {SENTENCES[0]}', "stream": True, "stream_format": "sse"}
    r = client.post("/speak", json=body)
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200 and events[0]["type"] == "speech.audio.delta"
    error, done = events[-2:]
    assert error["type"] == "error" and error["error"]["code"] == 413 and "too long" in error["error"]["message"]
    assert done["type"] == "speech.audio.done" and done["finish_reason"] == "error"
    assert client.get("/health").status_code == 200


class LostReplicaEngine(FakeEngine):
    """The second segment's stream fails after its first chunk, as when Ray loses the model replica."""

    async def stream(self, request: GenerationRequest) -> AsyncIterator[AudioChunk]:
        async for chunk in super().stream(request):
            yield chunk
            if len(self.requests) > 1:  # (the handle engine's ReplicaUnavailableError is one of these)
                raise EngineOverloadedError("speech model replica unavailable: ActorDiedError")


def test_a_replica_lost_mid_stream_is_a_503_in_the_stream(tmp_path) -> None:
    """The same fault before the response began is a 503: in the stream it says so too, not 500."""
    client = make_client(tmp_path, LostReplicaEngine())
    body = {"text": f'Short one. <break time="100ms"/> {SENTENCES[0]}', "stream": True, "stream_format": "sse"}
    events = [json.loads(line[6:]) for line in client.post("/speak", json=body).text.splitlines() if line]
    error, done = events[-2:]
    assert error["type"] == "error" and error["error"]["code"] == 503 and error["error"]["type"] == "server_error"
    assert done["finish_reason"] == "error"


def test_a_finished_stream_reports_its_finish_reason(client) -> None:
    r = client.post("/speak", json={"text": "Short and sweet.", "stream": True, "stream_format": "sse"})
    last = json.loads(r.text.strip().splitlines()[-1][6:])
    assert last["type"] == "speech.audio.done" and last["finish_reason"] == "end_of_audio"


def test_long_silence_at_a_join_is_trimmed_from_audio_and_context(tmp_path) -> None:
    engine = RecordingEngine(silent_tail_frames=20)  # 1.6 s of silence after every segment
    client = make_client(tmp_path, engine, join_silence_ms=240, segment_max_chars=100)
    text = " ".join(SENTENCES)  # a segment per sentence at 100 characters each
    r = client.post("/speak", json={"text": text, "response_format": "pcm"})
    pcm = _pcm16(r.content)
    n = len(engine.requests)
    assert n == 5
    spoken = [engine.frames_for(q) for q in engine.requests]
    # Each segment keeps 3 of its 20 silent frames (240 ms).
    assert len(pcm) == (sum(spoken) + 3 * n) * FRAME_SAMPLES
    for i in range(1, n):
        assert len(engine.requests[i].context[-1].codes) == spoken[i - 1] + 3


def test_break_tags_are_silence_between_segments(client, engine) -> None:
    text = 'One thing first. <break time="500ms"/> Then the other.'
    r = client.post("/speak", json={"text": text, "response_format": "pcm"})
    pcm = _pcm16(r.content)
    first = engine.frames_for(engine.requests[0]) * FRAME_SAMPLES
    gap = pcm[first : first + SAMPLE_RATE // 2]
    assert len(gap) == SAMPLE_RATE // 2 and np.all(gap == 0)
    assert len(pcm) == first + SAMPLE_RATE // 2 + engine.frames_for(engine.requests[1]) * FRAME_SAMPLES
    assert [q.text for q in engine.requests] == ["One thing first.", "Then the other."]
    assert engine.requests[1].context[-1].text == "One thing first."  # the pause does not break the context


def test_a_break_is_the_silence_asked_for_not_added_to_the_segments_own(tmp_path) -> None:
    """The segment before a break keeps none of its trailing silence: 500 ms is 500 ms (it was the
    join silence, 400 ms, more)."""
    engine = RecordingEngine(silent_tail_frames=8)
    client = make_client(tmp_path, engine, join_silence_ms=400)
    text = 'One thing first. <break time="500ms"/> Then the other.'
    pcm = _pcm16(client.post("/speak", json={"text": text, "response_format": "pcm"}).content)
    first = engine.frames_for(engine.requests[0]) * FRAME_SAMPLES
    zeros = np.flatnonzero(pcm[first - 1 :] != 0)[1] - 1  # the exact-zero run after the first speech
    assert SAMPLE_RATE // 2 <= zeros < SAMPLE_RATE // 2 + 24  # (the fade-out's last samples round to 0)


class RunawayEngine(FakeEngine):
    """A segment that says "runaway" never ends by itself: it runs to its cap."""

    def frames_for(self, request: GenerationRequest) -> int:
        return request.max_frames if "runaway" in request.text else super().frames_for(request)


def test_a_segment_cut_at_its_cap_is_the_whole_texts_finish_reason(tmp_path) -> None:
    """A later segment ending normally must not hide an earlier one cut short (`length`)."""
    client = make_client(tmp_path, RunawayEngine())
    text = 'A runaway clause. <break time="100ms"/> A calm ending.'
    assert client.post("/speak", json={"text": text}).headers["x-finish-reason"] == "length"
    sse = client.post("/speak", json={"text": text, "stream": True, "stream_format": "sse"})
    assert json.loads(sse.text.strip().splitlines()[-1][6:])["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"text": 'Hi <break time="later"/> there.'}, 422, "unreadable break tag"),
        ({"text": '<break time="1s"/>'}, 422, "nothing to speak"),
        ({"text": 'Hi <break time="' + "9" * 320 + 'ms"/> there.'}, 422, "over the 10000 ms limit"),
        ({"text": "Hi", "lexicon": {"": "x"}}, 422, "lexicon"),
        ({"text": "x" * 100_001}, 413, "over the 100000-character limit"),
    ],
)
def test_bad_long_form_input_is_a_clear_4xx(client, body, status, message) -> None:
    r = client.post("/speak", json=body)
    assert r.status_code == status and message in json.dumps(r.json()["detail"])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/speak", '"text": "Hi"'),
        ("/speak", '"text": "Hi", "stream": true'),
        ("/speak", '"text": "Hi", "stream": true, "stream_format": "sse"'),
        ("/v1/audio/speech", '"model": "tts-1", "input": "Hi", "voice": "alloy"'),
        ("/v1/audio/speech", '"model": "tts-1", "input": "Hi", "voice": "alloy", "stream_format": "sse"'),
        ("/conversation", '"turns": [{"speaker": 0, "text": "Hi"}]'),
    ],
)
@pytest.mark.parametrize("entry", [r'"Hi": "\ud800"', r'"\udfff": "x"'])
def test_a_lone_surrogate_in_the_lexicon_is_a_422(client, engine, path, body, entry) -> None:
    """JSON's escapes let a lexicon hold a lone surrogate, which no prompt can be encoded from (a 500
    before); the raw body is sent, as a client's JSON encoder would refuse it."""
    raw = f'{{{body}, "lexicon": {{{entry}}}}}'.encode()
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "lone surrogate" in json.dumps(r.json()["detail"]), r.text
    assert engine.requests == []


def test_lexicon_applies_after_normalization_over_the_servers(tmp_path) -> None:
    engine = FakeEngine()
    client = make_client(tmp_path, engine, lexicon={"SQL": "sequel", "Kubernetes": "koo-ber-net-eez"})
    text = "SQL on Kubernetes costs $5 for Nguyen."
    assert client.post("/speak", json={"text": text, "lexicon": {"five": "FIVE", "Nguyen": "Win"}}).status_code == 200
    assert engine.requests[-1].text == "sequel on koo-ber-net-eez costs FIVE dollars for Win."
    client.post("/speak", json={"text": text, "lexicon": {"SQL": "S Q L"}})
    assert engine.requests[-1].text.startswith("S Q L on koo-ber-net-eez")


def test_conversation_turns_are_long_form(client, engine) -> None:
    turns = [{"speaker": 0, "text": LONG_TEXT[:700], "pause_ms": 300}, {"speaker": 1, "text": "Indeed."}]
    r = client.post("/conversation", json={"turns": turns, "max_total_duration_ms": 600_000})
    assert r.status_code == 200
    *first_turn, reply = engine.requests
    assert len(first_turn) >= 3 and all(q.speaker == 0 for q in first_turn)
    assert reply.speaker == 1 and reply.context[-1].text == first_turn[-1].text


def test_a_conversation_without_a_length_limit_speaks_every_turn(tmp_path) -> None:
    """The default limit covers the text (the original design's 30 s dropped most of a long turn
    unasked); a limit given is kept, and says `length` where it cuts."""
    engine = RunawayEngine()  # every segment of the long turn runs to its cap
    client = make_client(tmp_path, engine)
    long_turn = " runaway ".join(SENTENCES * 2)
    turns = [{"speaker": 0, "text": long_turn, "pause_ms": 300}, {"speaker": 1, "text": "Okay."}]
    r = client.post("/conversation", json={"turns": turns})
    assert r.status_code == 200
    segments = len(engine.requests)
    assert engine.requests[-1].text == "Okay." and segments >= 3
    spoken = " ".join(q.text for q in engine.requests[:-1])
    assert spoken.split() == long_turn.split()
    engine.requests.clear()
    capped = client.post("/conversation", json={"turns": turns, "max_total_duration_ms": 30_000})
    assert capped.headers["x-finish-reason"] == "length" and len(engine.requests) < segments


def test_openai_speech_takes_long_input(client, engine) -> None:
    r = client.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "input": LONG_TEXT, "voice": "alloy", "response_format": "pcm"},
    )
    assert r.status_code == 200
    anchor, *segments = engine.requests
    assert anchor.request_id == "voice-alloy"
    assert len(segments) >= 11
    assert all(q.context[0].text == anchor.text for q in segments)  # the voice's reference comes first


def test_a_100000_character_text_is_accepted(client, engine) -> None:
    text = (LONG_TEXT + " ") * 34
    text = text[:100_000]
    r = client.post("/speak", json={"text": text, "max_duration_ms": 1500, "response_format": "pcm"})
    assert r.status_code == 200 and r.headers["x-finish-reason"] == "length"
    assert 0 < len(r.content) // 2 <= 1.5 * SAMPLE_RATE
    assert engine.requests[0].text == normalize_text(SENTENCES[0] + " " + SENTENCES[1] + " " + SENTENCES[2])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/speak", {"text": LONG_TEXT}),
        ("/conversation", {"turns": [{"text": LONG_TEXT[:1500], "speaker": 0}, {"text": LONG_TEXT[1500:], "speaker": 1}]}),
    ],
)
def test_minutes_of_whole_file_audio_are_joined_off_the_event_loop(client, monkeypatch, path, body) -> None:
    """Joining a long-form file's segments copies all of its audio (an hour of it: hundreds of MB, most of
    a second): done on the event loop, every other client's stream would stop meanwhile."""
    joins: list[bool] = []  # each join of over a minute of audio: was it made on the event loop?
    concatenate = np.concatenate

    def recording(arrays, *args, **kwargs):
        joined = concatenate(arrays, *args, **kwargs)
        if joined.ndim == 1 and len(joined) > 60 * SAMPLE_RATE:
            joins.append(on_event_loop())
        return joined

    monkeypatch.setattr(np, "concatenate", recording)
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    assert len(read_wav(r.content)[0]) > 60 * SAMPLE_RATE
    assert joins == [False]
