"""Bad input on every endpoint gets the right 4xx with a message, and the app keeps serving."""

import pytest

from tests.support_api import FakeEngine, make_client, not_audio_b64, wav_b64

AUDIO_LIMIT_S = 2.0
GOOD = {
    "/speak": {"text": "Hello"},
    "/clone_voice": {"text": "Hello", "reference_audio_b64": wav_b64(0.5), "reference_text": "Ref"},
    "/conversation": {"turns": [{"speaker": 0, "text": "Hello"}]},
    "/batch_speak": {"texts": ["Hello"]},
    "/contextual_speak": {"text": "Hello", "session_id": "s1"},
    "/v1/audio/speech": {"model": "tts-1", "input": "Hello", "voice": "alloy"},
    "/v1/voices": {"name": "v", "audio_b64": wav_b64(0.5), "transcript": "Ref"},
}


def _ctx(audio_b64: str) -> dict:
    return {"text": "Hello", "context": [{"text": "c", "speaker": 0, "audio_b64": audio_b64}]}


def _clone(audio_b64: str) -> dict:
    return {**GOOD["/clone_voice"], "reference_audio_b64": audio_b64}


def _voice(audio_b64: str) -> dict:
    return {**GOOD["/v1/voices"], "audio_b64": audio_b64}


CASES = [
    # invalid base64
    ("/speak", _ctx("%%% not base64 %%%"), 400, "context[0].audio_b64 is not valid base64"),
    ("/clone_voice", _clone("%%%"), 400, "reference_audio_b64 is not valid base64"),
    ("/v1/voices", _voice("%%%"), 400, "audio_b64 is not valid base64"),
    # bytes that are not audio
    ("/speak", _ctx(not_audio_b64()), 400, "not audio in a supported format"),
    ("/clone_voice", _clone(not_audio_b64()), 400, "not audio in a supported format"),
    ("/v1/voices", _voice(not_audio_b64()), 400, "not audio in a supported format"),
    # audio over the duration cap
    ("/speak", _ctx(wav_b64(3.0, rate=8000)), 413, "over the 2 s limit"),
    ("/clone_voice", _clone(wav_b64(3.0, rate=8000)), 413, "over the 2 s limit"),
    ("/v1/voices", _voice(wav_b64(3.0, rate=8000)), 413, "over the 2 s limit"),
    # empty / blank text
    ("/speak", {"text": ""}, 422, "text"),
    ("/speak", {"text": "   "}, 422, "blank"),
    ("/clone_voice", {**GOOD["/clone_voice"], "text": ""}, 422, "text"),
    ("/conversation", {"turns": [{"speaker": 0, "text": ""}]}, 422, "text"),
    ("/conversation", {"turns": []}, 422, "turns"),
    ("/batch_speak", {"texts": ["ok", ""]}, 422, "texts"),
    ("/contextual_speak", {"text": "", "session_id": "s1"}, 422, "text"),
    ("/v1/audio/speech", {**GOOD["/v1/audio/speech"], "input": ""}, 422, "input"),
    ("/v1/voices", {**GOOD["/v1/voices"], "transcript": ""}, 422, "transcript"),
    # speaker 2
    ("/speak", {"text": "Hi", "speaker": 2}, 422, "speaker"),
    (
        "/speak",
        {"text": "Hi", "context": [{"text": "c", "speaker": 2, "audio_b64": wav_b64(0.2)}]},
        422,
        "speaker",
    ),
    ("/conversation", {"turns": [{"speaker": 2, "text": "Hi"}]}, 422, "speaker"),
    ("/speak", {"text": "Hi", "stream_format": "sse"}, 422, "is a streamed response"),
    ("/batch_speak", {"texts": ["Hi"], "speaker": 2}, 422, "speaker"),
    ("/contextual_speak", {"text": "Hi", "speaker": 2, "session_id": "s1"}, 422, "speaker"),
    ("/v1/voices", {**GOOD["/v1/voices"], "speaker": 2}, 422, "speaker"),
    # 11 texts
    ("/batch_speak", {"texts": ["Hi"] * 11}, 422, "texts"),
    # ranges from the original design
    ("/conversation", {"turns": [{"speaker": 0, "text": "Hi", "pause_ms": 2001}]}, 422, "pause_ms"),
    ("/conversation", {**GOOD["/conversation"], "max_total_duration_ms": 4999}, 422, "max_total_duration_ms"),
    ("/clone_voice", {**GOOD["/clone_voice"], "max_duration_ms": 999}, 422, "max_duration_ms"),
    ("/batch_speak", {"texts": ["Hi"], "max_duration_per_text_ms": 20_001}, 422, "max_duration_per_text_ms"),
    # text over the configured limit
    ("/speak", {"text": "x" * 301}, 413, "over the 300-character limit"),
    ("/batch_speak", {"texts": ["ok", "x" * 301]}, 413, "texts[1]"),
    ("/conversation", {"turns": [{"speaker": 0, "text": "x" * 301}]}, 413, "turns[0].text"),
    # a break tag where one utterance has no pause to render it as: refused, not read aloud
    ("/batch_speak", {"texts": ["Hi", 'a <break time="1s"/> b']}, 422, "texts[1]: break tags are rendered by"),
    ("/clone_voice", {**GOOD["/clone_voice"], "text": "Hi <break/>"}, 422, "not by this endpoint"),
    ("/contextual_speak", {"text": 'Hi <break time="1s"', "session_id": "s1"}, 422, "unclosed break tag"),
    # a voice's name that is blank (printable characters none)
    ("/v1/voices", {**GOOD["/v1/voices"], "name": "   "}, 422, "blank"),
    ("/v1/voices", {**GOOD["/v1/voices"], "name": "\x00"}, 422, "blank"),
    # not JSON
    ("/speak", "not json", 422, "JSON"),
    # a field the endpoint does not have: misspelt, or from another endpoint
    ("/contextual_speak", {"text": "Hi", "session_id": "s1", "stream": True}, 422, "stream"),
    ("/conversation", {"turns": [{"speaker": 0, "text": "Hi", "pause": 300}]}, 422, "\"turns\",0,\"pause\""),
    ("/speak", {**GOOD["/speak"], "output": {"format": "pcm"}}, 422, "Extra inputs are not permitted"),
]


@pytest.fixture
def client(tmp_path):
    return make_client(tmp_path, FakeEngine(), max_audio_seconds=AUDIO_LIMIT_S, max_text_chars=300, max_long_text_chars=300)


@pytest.mark.parametrize(("path", "body", "status", "message"), CASES)
def test_bad_input_is_a_clear_4xx_and_the_app_still_serves(client, path, body, status, message) -> None:
    if isinstance(body, str):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert message in r.text
    ok = client.post(path, json=GOOD[path])
    assert ok.status_code in (200, 201), ok.text


def test_oversized_body_is_413(tmp_path) -> None:
    client = make_client(tmp_path, max_body_bytes=10_000)
    r = client.post(
        "/speak", json={"text": "Hi", "context": [{"text": "c", "speaker": 0, "audio_b64": "A" * 20_000}]}
    )
    assert r.status_code == 413 and "10000-byte limit" in r.json()["detail"]
    assert client.post("/speak", json={"text": "Hi"}).status_code == 200


def test_oversized_audio_bytes_are_413_before_decoding(tmp_path) -> None:
    client = make_client(tmp_path, max_audio_bytes=1000)
    r = client.post("/speak", json=_ctx(wav_b64(1.0)))
    assert r.status_code == 413 and "1000-byte limit" in r.json()["detail"]


def test_too_many_context_turns_is_413(tmp_path) -> None:
    client = make_client(tmp_path, max_context_turns=1)
    turn = {"text": "c", "speaker": 0, "audio_b64": wav_b64(0.1)}
    r = client.post("/speak", json={"text": "Hi", "context": [turn, turn]})
    assert r.status_code == 413 and "context" in r.json()["detail"]


def test_batch_limit_from_settings_is_413(tmp_path) -> None:
    r = make_client(tmp_path, max_batch_texts=2).post("/batch_speak", json={"texts": ["a", "b", "c"]})
    assert r.status_code == 413 and "3 items" in r.json()["detail"]


def test_overloaded_engine_is_503_with_retry_after(tmp_path) -> None:
    engine = FakeEngine(overloaded=True)
    client = make_client(tmp_path, engine, retry_after_s=3)
    for path in ("/speak", "/batch_speak", "/conversation", "/v1/audio/speech"):
        r = client.post(path, json=GOOD[path])
        assert r.status_code == 503 and r.headers["retry-after"] == "3", path
        assert "overloaded" in r.json()["detail"]
    r = client.post("/speak", json={"text": "Hi", "stream": True})
    assert r.status_code == 503
    engine.overloaded = False
    assert client.post("/speak", json=GOOD["/speak"]).status_code == 200


def test_engine_retry_hint_is_used(tmp_path) -> None:
    from serve_app.engine.types import EngineOverloadedError

    class Backpressured(FakeEngine):
        async def generate(self, request):
            error = EngineOverloadedError("queue full")
            error.retry_after_s = 7
            raise error

    r = make_client(tmp_path, Backpressured()).post("/speak", json={"text": "Hi"})
    assert r.status_code == 503 and r.headers["retry-after"] == "7"


def test_a_lexicon_that_makes_the_text_too_long_is_413_before_it_is_planned(tmp_path) -> None:
    client = make_client(tmp_path, FakeEngine(), max_long_text_chars=1000)
    body = {"text": "a " * 400, "lexicon": {"a": "word " * 80}, "max_duration_ms": 1000}
    r = client.post("/speak", json=body)
    assert r.status_code == 413 and "with the lexicon applied is over the 1000-character limit" in r.text
    assert client.post("/speak", json={**body, "text": "a a"}).status_code == 200  # 810 characters to speak


def test_prompt_too_long_for_the_model_is_413(tmp_path) -> None:
    client = make_client(tmp_path, FakeEngine(max_prompt_chars=20))
    r = client.post("/speak", json={"text": "word " * 10, "normalize": False})
    assert r.status_code == 413 and "too long for the model" in r.json()["detail"]


def test_unexpected_engine_failure_is_a_500_with_request_id(tmp_path) -> None:
    class Broken(FakeEngine):
        async def generate(self, request):
            raise RuntimeError("kernel exploded")

    r = make_client(tmp_path, Broken()).post(
        "/speak", json={"text": "Hi"}, headers={"X-Request-ID": "req-42"}
    )
    assert r.status_code == 500
    assert "req-42" in r.json()["detail"] and "exploded" not in r.text  # no internals leak
    assert r.headers["x-request-id"] == "req-42"


def test_request_id_is_echoed_or_generated(tmp_path) -> None:
    client = make_client(tmp_path)
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.post("/speak", json={"text": ""}).headers["x-request-id"]
    assert len(generated) == 32
    assert (
        client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
        != "bad id"
    )


def test_unknown_route_and_method_are_json(tmp_path) -> None:
    client = make_client(tmp_path)
    assert client.get("/nope").json() == {"detail": "Not Found"}
    assert client.get("/speak").status_code == 405


def test_oversized_body_without_length_is_413(tmp_path) -> None:
    client = make_client(tmp_path, max_body_bytes=10_000)

    def chunks():
        yield b'{"text": "Hi", "context": [{"text": "c", "speaker": 0, "audio_b64": "'
        for _ in range(20):
            yield b"A" * 1000
        yield b'"}]}'

    r = client.post("/speak", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "10000-byte limit" in r.json()["detail"]


def test_an_unexpected_failure_is_logged_once_with_its_request_id_not_raised_on(tmp_path) -> None:
    """A server logs the traceback of whatever the app raises (uvicorn's "Exception in ASGI
    application", Ray Serve's replica log), without the request id: the app logs the failure itself,
    once, with the id as a field, and answers the 500 without raising it on."""
    import io
    import json
    import logging

    from fastapi.testclient import TestClient

    from serve_app.api.app import create_app
    from serve_app.api.settings import ApiSettings
    from serve_app.observability.logs import configure_logging

    class Broken(FakeEngine):
        async def generate(self, request):
            raise RuntimeError("kernel exploded")

    stream = io.StringIO()
    handler = configure_logging("INFO", stream)
    try:
        for request_id_header in (True, False):
            settings = ApiSettings(voices_dir=tmp_path / "voices")
            app = create_app(Broken(), settings, request_id_header=request_id_header)
            with TestClient(app) as client:  # raises what the app raises: what a server would log again
                r = client.post("/speak", json={"text": "Hi"}, headers={"X-Request-ID": "req-43"})
            assert r.status_code == 500 and "req-43" in r.json()["detail"]
            # Behind Ray Serve's HTTP servers (`request_id_header=False`) they add the header: one only.
            assert r.headers.get_list("x-request-id") == (["req-43"] if request_id_header else [])
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    errors = [entry for entry in lines if entry["level"] == "ERROR"]
    assert len(errors) == 2, errors  # one per request
    assert all("kernel exploded" in e["exc_info"] and e["request_id"] == "req-43" for e in errors)
    access = [entry for entry in lines if entry["logger"] == "csm_serve.access"]
    assert [entry["status"] for entry in access] == [500, 500]
