"""The WebSocket for streamed text (`/v1/audio/speech/stream`) on the fake engine, in-process."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from serve_app.api.app import create_app
from serve_app.api.auth import key_id
from serve_app.api.settings import ApiSettings
from serve_app.engine.types import FRAME_SAMPLES, SAMPLE_RATE, EngineOverloadedError
from tests.support_api import FakeEngine, make_client

PATH = "/v1/audio/speech/stream"


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def client(tmp_path, engine) -> TestClient:
    return make_client(tmp_path, engine)


def receive_until(ws: Any, kind: str, context_id: str | None = None) -> list[dict[str, Any]]:
    """Messages up to and including the first of `kind` (for `context_id`, when given)."""
    out = []
    while True:
        message = json.loads(ws.receive_text())
        out.append(message)
        if message["type"] == kind and (context_id is None or message.get("context_id") == context_id):
            return out


def audio_of(messages: list[dict[str, Any]], context_id: str = "c1") -> bytes:
    return b"".join(
        base64.b64decode(m["audio"]) for m in messages if m["type"] == "audio" and m["context_id"] == context_id
    )


def test_text_pieces_become_speech_from_the_first_boundary_on(client, engine) -> None:
    pieces = ["Hello", " there", "! How are", " you doing on this", " fine day? I hope", " well."]
    with client.websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "c1", "text": pieces[0], "speaker": 0, "seed": 9})
        ws.send_json({"type": "text", "context_id": "c1", "text": pieces[1]})
        ws.send_json({"type": "text", "context_id": "c1", "text": pieces[2]})
        # "Hello there!" is certain now: its audio comes without a flush.
        first = json.loads(ws.receive_text())
        assert first["type"] == "audio" and first["text_span"] == [0, 12] and first["seq"] == 0
        for piece in pieces[3:]:
            ws.send_json({"type": "text", "context_id": "c1", "text": piece})
        ws.send_json({"type": "flush", "context_id": "c1"})
        messages = [first, *receive_until(ws, "flushed")]
        ws.send_json({"type": "close", "context_id": "c1"})
        messages += receive_until(ws, "done")

    text = "".join(pieces)
    audio = [m for m in messages if m["type"] == "audio"]
    assert [m["seq"] for m in audio] == list(range(len(audio)))
    assert [text[slice(*m["text_span"])] for m in audio if m["segment"] != audio[0]["segment"]][-1] == "I hope well."
    second_end, third = text.index("?") + 1, text.index("I hope")
    assert {tuple(m["text_span"]) for m in audio} == {(0, 12), (13, second_end), (third, len(text))}
    # offsets run on without gaps: each chunk starts where the one before ended
    for a, b in itertools.pairwise(audio):
        assert b["offset_ms"] == pytest.approx(a["offset_ms"] + a["duration_ms"], abs=1e-3)
    done = messages[-1]
    assert done == {
        "type": "done",
        "context_id": "c1",
        "finish_reason": "end_of_audio",
        "duration_ms": pytest.approx(audio[-1]["offset_ms"] + audio[-1]["duration_ms"], abs=1e-3),
        "segments": 3,
    }
    pcm = np.frombuffer(audio_of(messages), "<i2")
    assert len(pcm) == sum(engine.frames_for(q) for q in engine.requests) * FRAME_SAMPLES
    # Each sentence is generated hearing the ones before it (their generated codes).
    assert [q.text for q in engine.requests] == ["Hello there!", "How are you doing on this fine day?", "I hope well."]
    assert engine.requests[0].context == []
    assert [s.text for s in engine.requests[2].context] == ["Hello there!", "How are you doing on this fine day?"]
    assert all(s.codes is not None and s.audio is None for q in engine.requests for s in q.context)
    assert [q.sampling.seed for q in engine.requests] == [9, 10, 11] and engine.requests[0].speaker == 0


def test_several_contexts_share_one_socket(client, engine) -> None:
    with client.websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "a", "text": "First voice speaking.", "speaker": 0})
        ws.send_json({"type": "text", "context_id": "b", "text": "Second voice here.", "speaker": 1})
        ws.send_json({"type": "close", "context_id": "a"})
        ws.send_json({"type": "close", "context_id": "b"})
        messages = receive_until(ws, "done", "a")
        if not any(m["type"] == "done" and m["context_id"] == "b" for m in messages):
            messages += receive_until(ws, "done", "b")
    assert audio_of(messages, "a") and audio_of(messages, "b")
    by_text = {q.text: q for q in engine.requests}
    assert by_text["First voice speaking."].speaker == 0 and by_text["Second voice here."].speaker == 1
    assert all(q.context == [] for q in engine.requests)  # contexts do not hear each other


def test_cancel_stops_the_context_at_once_and_the_socket_goes_on(client, engine) -> None:
    engine.release_stream.clear()  # streams hold after their first chunk, as if generating
    with client.websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "c1", "text": "A long answer that the user interrupts"})
        ws.send_json({"type": "flush", "context_id": "c1"})
        assert json.loads(ws.receive_text())["type"] == "audio"
        ws.send_json({"type": "cancel", "context_id": "c1"})
        messages = receive_until(ws, "done")
        assert messages[-1]["finish_reason"] == "cancelled"
        assert engine.streams_closed_early == 1  # the engine stream was closed: its slot is free
        engine.release_stream.set()
        ws.send_json({"type": "text", "context_id": "c2", "text": "Next question, please."})
        ws.send_json({"type": "close", "context_id": "c2"})
        after = receive_until(ws, "done", "c2")
    assert after[-1]["finish_reason"] == "end_of_audio" and audio_of(after, "c2")


def test_late_text_after_a_barge_in_is_dropped_not_spoken_under_the_old_id(client, engine) -> None:
    """A language model's tokens still in flight after `cancel` must not reopen the context (before,
    they were spoken in the default voice and held a context slot for good)."""
    engine.release_stream.clear()
    with client.websocket_connect(PATH) as ws:
        for turn in range(10):  # more barge-ins than the socket has context slots (8)
            context_id = f"turn{turn}"
            ws.send_json({"type": "text", "context_id": context_id, "text": "A long answer", "voice": "alloy"})
            ws.send_json({"type": "flush", "context_id": context_id})
            assert json.loads(ws.receive_text())["type"] == "audio"
            ws.send_json({"type": "cancel", "context_id": context_id})
            assert receive_until(ws, "done")[-1]["finish_reason"] == "cancelled"
            for late in ("And more. ", "Still more. "):
                ws.send_json({"type": "text", "context_id": context_id, "text": late})
            ws.send_json({"type": "flush", "context_id": context_id})
            ws.send_json({"type": "close", "context_id": context_id})
            error = json.loads(ws.receive_text())  # one error for the late text, nothing else
            assert error["type"] == "error" and error["code"] == 409 and error["context_id"] == context_id
            assert "has ended (cancelled)" in error["message"]
        engine.release_stream.set()
        ws.send_json({"type": "text", "context_id": "next", "text": "Next question."})
        ws.send_json({"type": "close", "context_id": "next"})
        messages = receive_until(ws, "done", "next")
    assert {m["context_id"] for m in messages} == {"next"}
    assert not any(q.text in ("And more.", "Still more.") for q in engine.requests)


def test_every_flush_is_answered(tmp_path) -> None:
    """Clients count the flushes answered: three flushes while speaking get three `flushed`."""
    with make_client(tmp_path, PacedEngine()).websocket_connect(PATH) as ws:
        for piece in ("One. ", "Two. ", "Three."):
            ws.send_json({"type": "text", "context_id": "c1", "text": piece})
            ws.send_json({"type": "flush", "context_id": "c1"})
        ws.send_json({"type": "close", "context_id": "c1"})
        messages = receive_until(ws, "done")
    assert [m["type"] for m in messages].count("flushed") == 3


def test_a_client_that_leaves_after_a_socket_wide_close_stops_its_contexts(client, engine) -> None:
    """After `{"type": "close"}` the server no longer reads messages, but still notices the client
    leaving: its generation stops instead of running to the end of the text."""
    engine.release_stream.clear()
    with client.websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "c1", "text": "A long answer that nobody hears"})
        ws.send_json({"type": "flush", "context_id": "c1"})
        assert json.loads(ws.receive_text())["type"] == "audio"
        ws.send_json({"type": "close"})
        time.sleep(0.05)
    for _ in range(200):
        if engine.streams_closed_early:
            break
        time.sleep(0.01)
    engine.release_stream.set()
    assert engine.streams_closed_early == 1


def test_a_draining_server_finishes_open_contexts_refuses_new_ones_then_goes_away(tmp_path, engine) -> None:
    """Under Ray the drain gate tells an open socket that the server stops: the context being spoken
    finishes, a new one is refused (503), and the socket closes (1001) once nothing is left."""
    app = create_app(engine, ApiSettings(voices_dir=tmp_path))
    drain = {"on": False}

    async def gate(scope, receive, send):  # as serve_app.deploy.draining.DrainGate marks a socket
        scope.setdefault("state", {})["draining"] = lambda: drain["on"]
        await app(scope, receive, send)

    with TestClient(gate).websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "open", "text": "Being spoken as the stop comes. "})
        messages = [json.loads(ws.receive_text())]  # its first audio: the context is open
        drain["on"] = True
        ws.send_json({"type": "text", "context_id": "new", "text": "Too late."})
        ws.send_json({"type": "text", "context_id": "open", "text": "And its last words."})
        ws.send_json({"type": "close", "context_id": "open"})
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:
                messages.append(json.loads(ws.receive_text()))
    assert closed.value.code == 1001 and messages[0]["type"] == "audio"
    refused = [m for m in messages if m["type"] == "error"]
    assert [(m["context_id"], m["code"]) for m in refused] == [("new", 503)]
    done = [m for m in messages if m["type"] == "done"]
    assert [(m["context_id"], m["finish_reason"]) for m in done] == [("open", "end_of_audio")]
    assert " ".join(q.text for q in engine.requests) == "Being spoken as the stop comes. And its last words."


def test_closing_the_socket_finishes_every_context(client) -> None:
    with client.websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "x", "text": "Finish me"})
        ws.send_json({"type": "close"})
        messages = []
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:
                messages.append(json.loads(ws.receive_text()))
    assert closed.value.code == 1000
    assert messages[-1]["type"] == "done" and messages[-1]["finish_reason"] == "end_of_audio"


@pytest.mark.parametrize(
    ("message", "code", "needle"),
    [
        ("not json", 422, "invalid message"),
        # too deep for json.loads, which looks for the context_id of a refused message
        pytest.param("[" * 30_000 + "]" * 30_000, 422, "invalid message", id="nested-arrays"),
        pytest.param("[" * 40_000 + "]" * 40_000, 413, "character limit", id="nested-arrays-too-long"),
        ({"type": "shout", "context_id": "c1"}, 422, "invalid message"),
        ({"type": "flush", "context_id": "nobody"}, 404, "no open context"),
        ({"type": "text", "context_id": "c1", "text": "x", "output_format": "wavy_1"}, 422, "output_format"),
        ({"type": "text", "context_id": "c1", "text": "x", "lexicon": {"": "y"}}, 422, "lexicon"),
    ],
)
def test_bad_messages_get_an_error_and_the_socket_stays_open(client, message, code, needle) -> None:
    with client.websocket_connect(PATH) as ws:
        ws.send_text(message if isinstance(message, str) else json.dumps(message))
        error = json.loads(ws.receive_text())
        assert error["type"] == "error" and error["code"] == code and needle in error["message"]
        ws.send_json({"type": "text", "context_id": "ok", "text": "Still here."})
        ws.send_json({"type": "close", "context_id": "ok"})
        assert receive_until(ws, "done")[-1]["finish_reason"] == "end_of_audio"


def test_a_binary_frame_is_read_as_utf8_json_and_a_bad_one_keeps_the_socket(client) -> None:
    """Some WebSocket libraries send JSON as binary frames: read as UTF-8; bytes that are not UTF-8
    get an error and the socket serves on (before, the socket dropped with 1006)."""
    with client.websocket_connect(PATH) as ws:
        ws.send_bytes(b"\xff\xfe")
        error = json.loads(ws.receive_text())
        assert error["type"] == "error" and error["code"] == 400 and "UTF-8" in error["message"]
        ws.send_bytes(json.dumps({"type": "text", "context_id": "b", "text": "Sent as bytes."}).encode())
        ws.send_bytes(json.dumps({"type": "close", "context_id": "b"}).encode())
        assert receive_until(ws, "done")[-1]["finish_reason"] == "end_of_audio"


def test_a_replica_lost_mid_context_is_a_503(tmp_path) -> None:
    from tests.test_api_longform import LostReplicaEngine

    with make_client(tmp_path, LostReplicaEngine()).websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "c1", "text": "First sentence here. Second one follows."})
        ws.send_json({"type": "close", "context_id": "c1"})
        messages = receive_until(ws, "done")
    error = next(m for m in messages if m["type"] == "error")
    assert error["code"] == 503 and messages[-1]["finish_reason"] == "error"


def test_context_errors_end_the_context(client) -> None:
    with client.websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "c1", "text": "Fine.", "voice": "nobody"})
        messages = receive_until(ws, "done")
        assert [m["type"] for m in messages] == ["error", "done"]
        assert messages[0]["code"] == 404 and messages[1]["finish_reason"] == "error"
        ws.send_json({"type": "text", "context_id": "c2", "text": 'Wait <break time="forever"/> now.'})
        messages = receive_until(ws, "done", "c2")
        assert any(m["type"] == "error" and "unreadable break tag" in m["message"] for m in messages)
        ws.send_json({"type": "text", "context_id": "c3", "text": "One. ", "seed": 1})
        ws.send_json({"type": "text", "context_id": "c3", "text": "Two.", "seed": 2})
        messages = receive_until(ws, "error")
        assert "first message only" in messages[-1]["message"]


def test_a_refused_first_message_opens_no_context(tmp_path) -> None:
    """Text over the context's limit in its first message is refused before the context opens, so
    it holds no slot and the id stays free."""
    client = make_client(tmp_path, ws_max_contexts=1, max_long_text_chars=100)
    with client.websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "c1", "text": "x" * 150})
        error = json.loads(ws.receive_text())
        assert error["type"] == "error" and error["code"] == 413 and error["context_id"] == "c1"
        ws.send_json({"type": "text", "context_id": "c2", "text": "Hi."})
        ws.send_json({"type": "close", "context_id": "c2"})
        assert json.loads(ws.receive_text())["type"] == "audio"  # not a 429: c1 holds no slot
        assert receive_until(ws, "done")[-1]["finish_reason"] == "end_of_audio"


def test_context_limit(tmp_path) -> None:
    client = make_client(tmp_path, ws_max_contexts=1)
    with client.websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "a", "text": "held open"})
        ws.send_json({"type": "text", "context_id": "b", "text": "one too many"})
        error = receive_until(ws, "error")[-1]
        assert error["code"] == 429 and error["context_id"] == "b"


def test_break_tags_and_output_formats(client, engine) -> None:
    with client.websocket_connect(PATH) as ws:
        ws.send_json(
            {"type": "text", "context_id": "c1", "output_format": "ulaw_8000", "text": 'Hi. <break time="250ms"/> Bye.'}
        )
        ws.send_json({"type": "close", "context_id": "c1"})
        messages = receive_until(ws, "done")
    ulaw = audio_of(messages)
    samples = sum(engine.frames_for(q) for q in engine.requests) * FRAME_SAMPLES + SAMPLE_RATE // 4
    assert abs(len(ulaw) - samples // 3) <= 2  # one byte per sample at 8 kHz
    audio = [m for m in messages if m["type"] == "audio"]
    assert [4, 25] in [m["text_span"] for m in audio]  # the pause's chunk names the break tag
    # The 8 kHz encoder holds samples back (the first piece gives no bytes yet): the timeline still
    # starts at 0 and runs on without gaps to the total, and every chunk names a segment that exists.
    done = messages[-1]
    assert audio[0]["offset_ms"] == 0
    for a, b in itertools.pairwise(audio):
        assert b["offset_ms"] == pytest.approx(a["offset_ms"] + a["duration_ms"], abs=1e-3)
    assert done["duration_ms"] == pytest.approx(audio[-1]["offset_ms"] + audio[-1]["duration_ms"], abs=1e-3)
    assert all(0 <= m["segment"] < done["segments"] for m in audio)


class PacedEngine(FakeEngine):
    """The fake engine, yielding its chunks a little apart, as a real one does."""

    async def stream(self, request):
        async for chunk in super().stream(request):
            yield chunk
            await asyncio.sleep(0.002)


def test_a_lexicon_entry_that_stands_for_a_paragraph_is_spoken_in_segments(tmp_path) -> None:
    """As on /speak: a segment the lexicon makes longer than the model takes is cut again (before, the
    context failed with a 413 at that segment)."""
    from tests.test_api_longform import SENTENCES

    engine = FakeEngine(max_prompt_chars=600)
    client = make_client(tmp_path, engine)
    paragraph = " ".join(SENTENCES)  # 400 characters
    with client.websocket_connect(PATH) as ws:
        first = {"type": "text", "context_id": "c1", "text": "Hi there. Q Q.", "lexicon": {"Q": paragraph}}
        ws.send_json(first)
        ws.send_json({"type": "close", "context_id": "c1"})
        messages = receive_until(ws, "done")
    assert not [m for m in messages if m["type"] == "error"]
    assert messages[-1]["finish_reason"] == "end_of_audio"
    spoken = [q.text for q in engine.requests]
    assert max(len(t) for t in spoken) <= 600 and len(spoken) >= 3
    expected = f"Hi there. {paragraph} {paragraph}."
    assert " ".join(spoken).split() == expected.split()


def test_a_flush_straight_before_a_close_is_answered_before_done(tmp_path) -> None:
    """The close arrives while the flushed text is still being spoken (a paced engine): the context
    runs out of text and ends, and still answers the flush first."""
    with make_client(tmp_path, PacedEngine()).websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "c1", "text": "Hello"})
        ws.send_json({"type": "flush", "context_id": "c1"})
        ws.send_json({"type": "close", "context_id": "c1"})
        messages = receive_until(ws, "done")
    kinds = [m["type"] for m in messages]
    assert kinds.count("flushed") == 1 and kinds.index("flushed") < kinds.index("done")


def test_a_slow_reader_gets_its_context_closed_not_the_engine_stalled(tmp_path) -> None:
    """A client that stops reading: once more than `ws_max_buffered_s` of audio waits for it, the
    context is closed (its generation stopped) and the error is what it reads next."""
    engine = PacedEngine()
    app = create_app(engine, ApiSettings(voices_dir=tmp_path, ws_max_buffered_s=1.0))
    gate = {"open": True}

    async def slow_network(scope, receive, send):  # the socket stops draining after the first message
        async def throttled(message):
            while message["type"] == "websocket.send" and not gate["open"]:
                await asyncio.sleep(0.01)
            await send(message)
            if message["type"] == "websocket.send":
                gate["open"] = False

        await app(scope, receive, throttled)

    with TestClient(slow_network).websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "c1", "text": "This is a long answer that goes on. " * 12})
        ws.send_json({"type": "close", "context_id": "c1"})
        first = json.loads(ws.receive_text())
        assert first["type"] == "audio"
        for _ in range(500):
            if engine.streams_closed_early:
                break
            time.sleep(0.01)
        assert engine.streams_closed_early == 1  # generation stopped while the client was not reading
        assert engine.chunks_yielded < 20  # ... long before the answer's 60-odd chunks
        messages = []
        while not messages or messages[-1]["type"] != "done":
            gate["open"] = True
            messages.append(json.loads(ws.receive_text()))
    types = [m["type"] for m in messages]
    assert types[-2:] == ["error", "done"] and types.count("audio") <= 1  # queued audio dropped
    assert messages[-2]["code"] == "slow_reader" and "did not read" in messages[-2]["message"]
    assert messages[-1]["finish_reason"] == "error"
    sent = [first] + [m for m in messages if m["type"] == "audio"]
    assert messages[-1]["duration_ms"] == pytest.approx(sum(m["duration_ms"] for m in sent))  # not the dropped


def held_network(app: Any, gate: threading.Event) -> Any:
    """`app` behind a network that holds every message to the client until `gate` is set: the
    writer waits on the first, the rest stay queued on the server."""

    async def network(scope, receive, send):
        async def held(message):
            while message["type"] == "websocket.send" and not gate.is_set():
                await asyncio.sleep(0.01)
            await send(message)

        await app(scope, receive, held)

    return network


@pytest.fixture
def dones(monkeypatch) -> list[tuple[str, str]]:
    """(context_id, finish_reason) of each context's end, as the server queues its `done`."""
    from serve_app.api import stream_session

    ended: list[tuple[str, str]] = []
    done = stream_session.SpeechContext._done

    def recorded(context: Any, reason: str) -> None:
        if not context.finished:
            ended.append((context.id, reason))
        done(context, reason)

    monkeypatch.setattr(stream_session.SpeechContext, "_done", recorded)
    return ended


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def audio_ms(messages: list[dict[str, Any]]) -> float:
    return sum(m["duration_ms"] for m in messages if m["type"] == "audio")


def test_an_id_reused_after_close_names_a_new_context_and_its_cancel_spares_the_earlier_one(
    tmp_path, dones
) -> None:
    """The first c1 is spoken, its messages still on their way over a slow network, when a new c1
    opens and is cancelled: only the new one's queue is dropped; each gets its own `done`."""
    gate = threading.Event()
    app = create_app(FakeEngine(), ApiSettings(voices_dir=tmp_path))
    with TestClient(held_network(app, gate)).websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "c1", "text": "First utterance here. Second one too."})
        ws.send_json({"type": "close", "context_id": "c1"})
        wait_until(lambda: ("c1", "end_of_audio") in dones)
        ws.send_json({"type": "text", "context_id": "c1", "text": "A new utterance under the same id. "})
        ws.send_json({"type": "cancel", "context_id": "c1"})
        wait_until(lambda: ("c1", "cancelled") in dones)
        gate.set()
        ws.send_json({"type": "text", "context_id": "last", "text": "Marker."})
        ws.send_json({"type": "close", "context_id": "last"})
        messages = [m for m in receive_until(ws, "done", "last") if m["context_id"] == "c1"]
    first, second = (m for m in messages if m["type"] == "done")
    assert first["finish_reason"] == "end_of_audio" and first["segments"] == 2
    spoken = messages[: messages.index(first)]
    assert [m["seq"] for m in spoken] == list(range(len(spoken))) and {m["segment"] for m in spoken} == {0, 1}
    assert first["duration_ms"] == pytest.approx(audio_ms(spoken))
    assert messages[-1] is second and second["finish_reason"] == "cancelled" and second["duration_ms"] == 0


def test_cancel_drops_the_queued_audio_and_done_counts_what_was_sent(tmp_path, dones) -> None:
    engine = FakeEngine()
    gate = threading.Event()
    app = create_app(engine, ApiSettings(voices_dir=tmp_path))
    with TestClient(held_network(app, gate)).websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "c1", "text": "An answer the user interrupts. " * 3})
        ws.send_json({"type": "flush", "context_id": "c1"})
        wait_until(lambda: engine.chunks_yielded >= 4)
        ws.send_json({"type": "cancel", "context_id": "c1"})
        wait_until(lambda: ("c1", "cancelled") in dones)
        gate.set()
        messages = receive_until(ws, "done")
    assert [m["type"] for m in messages] == ["audio", "done"]  # the message on its way, then done
    assert messages[-1]["finish_reason"] == "cancelled"
    assert messages[-1]["duration_ms"] == pytest.approx(audio_ms(messages))


class FailingLaterEngine(FakeEngine):
    """The fake engine, overloaded from its second request on: a context's later segment fails."""

    async def stream(self, request):
        if self.requests:
            raise EngineOverloadedError("no free slot")
        async for chunk in super().stream(request):
            yield chunk


@pytest.mark.parametrize("speed", [1.0, 2.0])
def test_a_context_that_fails_later_still_sends_the_audio_it_made(tmp_path, dones, speed) -> None:
    """As over HTTP: the audio made before the failure goes out (here still queued when it failed,
    with what the stretcher held back), then the error, then `done`, which counts that audio."""
    engine = FailingLaterEngine()
    gate = threading.Event()
    app = create_app(engine, ApiSettings(voices_dir=tmp_path))
    with TestClient(held_network(app, gate)).websocket_connect(PATH) as ws:
        text = "The first sentence is spoken in full. The second one fails."
        ws.send_json({"type": "text", "context_id": "c1", "text": text, "speed": speed})
        ws.send_json({"type": "close", "context_id": "c1"})
        wait_until(lambda: ("c1", "error") in dones)
        gate.set()
        messages = receive_until(ws, "done")
    assert [m["type"] for m in messages[-2:]] == ["error", "done"] and messages[-2]["code"] == 503
    done = messages[-1]
    assert done["finish_reason"] == "error" and done["duration_ms"] == pytest.approx(audio_ms(messages))
    made = engine.frames_for(engine.requests[0]) * FRAME_SAMPLES / speed  # samples, after the speed
    assert len(audio_of(messages)) // 2 == samples_at(done["duration_ms"])
    assert samples_at(done["duration_ms"]) == pytest.approx(made, abs=SAMPLE_RATE // 100)  # all of it


def test_a_message_being_sent_when_the_socket_closes_still_arrives(tmp_path) -> None:
    """After a socket-wide close the server waits for its queue to empty: the message the writer has
    taken but not yet put on a slow network (the last `done`) is not cut off."""
    app = create_app(FakeEngine(), ApiSettings(voices_dir=tmp_path))

    async def slow_network(scope, receive, send):
        async def delayed(message):
            if message["type"] == "websocket.send":
                await asyncio.sleep(0.05)
            await send(message)

        await app(scope, receive, delayed)

    with TestClient(slow_network).websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "c1", "text": "Hello there."})
        ws.send_json({"type": "close"})
        messages = receive_until(ws, "done")
    assert messages[-1]["type"] == "done" and messages[-1]["context_id"] == "c1"


def test_a_client_that_sends_and_never_reads_is_disconnected(tmp_path, monkeypatch) -> None:
    """Every bad message is answered by an error: a client that never reads them must not grow the
    server's queue without end; past the bound its socket is closed (1008) and its contexts stopped."""
    from serve_app.api import stream_session

    monkeypatch.setattr(stream_session, "MAX_QUEUED_MESSAGES", 20)
    engine = PacedEngine()
    app = create_app(engine, ApiSettings(voices_dir=tmp_path))
    sent = []

    async def stalled_network(scope, receive, send):  # nothing the server sends reaches the client
        async def stalled(message):
            if message["type"] == "websocket.send":
                sent.append(message)
                await asyncio.Event().wait()
            await send(message)

        await app(scope, receive, stalled)

    with TestClient(stalled_network).websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "c1", "text": "A long answer that goes on. " * 20})
        for _ in range(40):
            ws.send_text("not json")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1008
    assert len(sent) == 1  # the writer was stuck on the first message all along
    for _ in range(200):
        if engine.in_flight == 0:
            break
        time.sleep(0.01)
    assert engine.in_flight == 0  # the context's generation stopped with the socket


def test_the_api_key_guards_the_socket_too(tmp_path) -> None:
    engine = FakeEngine()
    client = make_client(tmp_path, engine, api_keys="s3cret")
    for url, headers in [(PATH, {}), (PATH + "?api_key=wrong", {}), (PATH, {"Authorization": "Bearer wrong"})]:
        with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect(url, headers=headers):
            pass
        assert denied.value.status_code == 401 and "API key" in denied.value.json()["detail"]
    for url, headers in [(PATH, {"Authorization": "Bearer s3cret"}), (PATH + "?api_key=s3cret", {})]:
        with client.websocket_connect(url, headers=headers) as ws:
            ws.send_json({"type": "text", "context_id": "c", "text": "Authorized."})
            ws.send_json({"type": "close", "context_id": "c"})
            assert receive_until(ws, "done")[-1]["finish_reason"] == "end_of_audio"
    # the socket's speech is filed under its key, as a request's is (the engine shares slots by caller)
    assert engine.requests and {r.caller for r in engine.requests} == {key_id("s3cret")}


SPOKEN = ["Hello there! How are", " you doing on this fine day?", " I hope", " well."]


def speak_context(ws: Any, context_id: str, **options: Any) -> list[dict[str, Any]]:
    """`SPOKEN` on a new context with `options`, closed, up to its `done`."""
    ws.send_json({"type": "text", "context_id": context_id, "text": SPOKEN[0], "seed": 5, **options})
    for piece in SPOKEN[1:]:
        ws.send_json({"type": "text", "context_id": context_id, "text": piece})
    ws.send_json({"type": "close", "context_id": context_id})
    return [m for m in receive_until(ws, "done", context_id) if m.get("context_id") == context_id]


def samples_at(ms: float) -> int:
    """24 kHz samples of a time the messages give in ms (rounded to the µs)."""
    return round(ms * SAMPLE_RATE / 1000)


def assert_gapless(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The audio messages' timeline starts at 0, runs on without gaps (to the sample) and ends at
    `done`'s duration."""
    audio, done = [m for m in messages if m["type"] == "audio"], messages[-1]
    assert audio[0]["offset_ms"] == 0 and done["type"] == "done"
    ends = [samples_at(m["offset_ms"]) + samples_at(m["duration_ms"]) for m in audio]
    assert [samples_at(m["offset_ms"]) for m in audio[1:]] == ends[:-1]
    assert samples_at(done["duration_ms"]) == ends[-1]
    assert all(0 <= m["segment"] < done["segments"] for m in audio)
    return audio


def test_speed_stretches_a_contexts_audio_and_its_timeline(client) -> None:
    """The same text and seed at 2.0 and 0.5: half and twice the audio, to the sample (one stretcher
    for the whole context), and every time the messages give is that of the audio sent."""
    with client.websocket_connect(PATH) as ws:
        runs = {speed: speak_context(ws, f"s{speed}", speed=speed) for speed in (1.0, 2.0, 0.5)}
    samples = {speed: len(audio_of(messages, f"s{speed}")) // 2 for speed, messages in runs.items()}
    assert samples[2.0] == round(samples[1.0] / 2) and samples[0.5] == samples[1.0] * 2
    for speed, messages in runs.items():
        audio = assert_gapless(messages)
        assert samples_at(messages[-1]["duration_ms"]) == samples[speed]
        assert messages[-1]["finish_reason"] == "end_of_audio" and messages[-1]["segments"] == 3
        assert [m["seq"] for m in audio] == list(range(len(audio)))
        # Each message names a piece it came after; the held-back rest is sent with the last piece's.
        spans = {tuple(m["text_span"]) for m in runs[1.0] if m["type"] == "audio"}
        assert {tuple(m["text_span"]) for m in audio} <= spans
        assert audio[-1]["text_span"] == runs[1.0][-2]["text_span"] and audio[-1]["segment"] == 2


def test_speed_keeps_a_resampled_formats_timeline_gapless(client, engine) -> None:
    """μ-law at 8 kHz holds samples back too: the timeline still covers exactly the stretched audio."""
    with client.websocket_connect(PATH) as ws:
        messages = speak_context(ws, "c1", speed=1.5, output_format="ulaw_8000")
    assert_gapless(messages)
    stretched = round(sum(engine.frames_for(q) for q in engine.requests) * FRAME_SAMPLES / 1.5)
    assert samples_at(messages[-1]["duration_ms"]) == stretched
    assert abs(len(audio_of(messages)) - stretched // 3) <= 2  # one byte per sample at 8 kHz


def test_a_flush_at_a_slow_speed_sends_all_of_the_flushed_texts_audio(client, engine) -> None:
    """The stretcher holds up to 160 ms back; a flush sends it before `flushed`, so the text flushed
    is heard in full while the context stays open."""
    with client.websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "c1", "text": "Hello there", "speed": 0.5})
        ws.send_json({"type": "flush", "context_id": "c1"})
        before = [json.loads(ws.receive_text())]
        while before[-1]["type"] not in ("flushed", "error"):
            before.append(json.loads(ws.receive_text()))
        assert before[-1]["type"] == "flushed"
        flushed = sum(engine.frames_for(q) for q in engine.requests) * FRAME_SAMPLES * 2
        assert len(audio_of(before)) // 2 == flushed
        ws.send_json({"type": "text", "context_id": "c1", "text": "and goodbye."})
        ws.send_json({"type": "close", "context_id": "c1"})
        messages = before + receive_until(ws, "done")
    assert_gapless(messages)
    generated = sum(engine.frames_for(q) for q in engine.requests) * FRAME_SAMPLES
    assert len(audio_of(messages)) // 2 == generated * 2


def test_speed_1_is_the_unstretched_path(client, monkeypatch) -> None:
    """At 1.0, given or not, no stretcher is made and the bytes and timeline are the same."""
    from serve_app.api import stream_session

    def no_stretcher(speed: float) -> None:
        raise AssertionError(f"a stretcher at speed {speed}")

    monkeypatch.setattr(stream_session, "TempoStretcher", no_stretcher)
    with client.websocket_connect(PATH) as ws:
        given, default = speak_context(ws, "a", speed=1.0), speak_context(ws, "b")
    assert [{**m, "context_id": "b"} for m in given] == default


@pytest.mark.parametrize(
    ("speed", "bound"), [(0.2, "greater than or equal to 0.25"), (4.5, "less than or equal to 4")]
)
def test_an_out_of_range_speed_is_refused_and_the_socket_serves_on(client, speed, bound) -> None:
    with client.websocket_connect(PATH) as ws:
        ws.send_json({"type": "text", "context_id": "c1", "text": "Too fast or too slow.", "speed": speed})
        error = json.loads(ws.receive_text())
        assert error == {"type": "error", "code": 422, "context_id": "c1", "message": error["message"]}
        assert error["message"].startswith("invalid message: text.speed: Input should be")
        assert bound in error["message"]
        messages = speak_context(ws, "c1", speed=4.0)  # the refused context never opened: its id is free
    assert assert_gapless(messages) and messages[-1]["finish_reason"] == "end_of_audio"
