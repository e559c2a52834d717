"""TTSClient / AsyncTTSClient over real HTTP on loopback: every call, errors mapped to typed exceptions."""
from __future__ import annotations

import asyncio
import base64
import io
import struct

import httpx
import numpy as np
import pytest
import soundfile as sf

from serve_app.client import (
    AsyncTTSClient,
    BadRequestError,
    ConflictError,
    NotFoundError,
    OverloadedError,
    ServerError,
    TooLargeError,
    TTSClient,
    TTSConnectionError,
    TTSError,
    UnprocessableEntityError,
)
from serve_app.client.errors import parse_retry_after
from serve_app.engine.types import FRAME_SAMPLES, SAMPLE_RATE
from tests.support_tools import MAX_TEXT_CHARS, ToneEngine, api_app, read_wav, serve_http, tone, wav_bytes


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    with serve_http(api_app(ToneEngine(), tmp_path_factory.mktemp("voices"))) as base:
        yield base


@pytest.fixture()
def client(url: str) -> TTSClient:
    with TTSClient(url, timeout=30) as c:
        yield c


@pytest.fixture()
def ref_wav(tmp_path) -> str:
    path = tmp_path / "ref.wav"
    path.write_bytes(wav_bytes(tone(0.5)))
    return str(path)


def seconds(wav: bytes) -> float:
    pcm, rate = read_wav(wav)
    assert rate == SAMPLE_RATE and pcm.ndim == 1
    return len(pcm) / rate


def test_speak_returns_a_wav_within_the_limit(client: TTSClient) -> None:
    short = seconds(client.speak("Hi.", speaker=0, max_duration_ms=10000))
    longer = seconds(client.speak("A much longer sentence than the first one.", speaker=1))
    capped = seconds(client.speak("A much longer sentence than the first one.", max_duration_ms=240))
    assert 0 < short < longer
    assert capped == pytest.approx(3 * FRAME_SAMPLES / SAMPLE_RATE)


def test_speak_sends_context_from_paths_and_bytes(client: TTSClient, ref_wav: str) -> None:
    wav = client.speak(
        "Continue.",
        context=[
            {"text": "Earlier turn.", "speaker": 1, "audio": ref_wav},
            {"text": "Another.", "speaker": 0, "audio": wav_bytes(tone(0.2))},
        ],
    )
    assert seconds(wav) > 0


def server_detail(url: str, path: str, body: dict) -> object:
    """What the server itself answers, read without the client."""
    return httpx.post(url + path, json=body, timeout=30).json()["detail"]


def test_bad_context_audio_is_a_bad_request_with_the_servers_message(client: TTSClient, url: str) -> None:
    bad = {"text": "x", "speaker": 0, "audio_b64": "not base64!"}
    with pytest.raises(BadRequestError) as err:
        client.speak("Hi.", context=[bad])
    assert err.value.status_code == 400 and "base64" in err.value.message
    assert err.value.message == server_detail(url, "/speak", {"text": "Hi.", "speaker": 0, "context": [bad]})
    assert err.value.request_id  # the server's X-Request-ID, for support tickets
    with pytest.raises(BadRequestError, match="not audio"):
        client.speak("Hi.", context=[{"text": "x", "speaker": 0, "audio": b"plain text, not audio"}])


def test_schema_errors_are_unprocessable_and_name_the_field(client: TTSClient) -> None:
    with pytest.raises(UnprocessableEntityError) as err:
        client.speak("Hi.", speaker=2)
    assert err.value.status_code == 422 and "speaker" in err.value.message
    assert isinstance(err.value.detail, list)  # pydantic's error list is kept as sent
    with pytest.raises(UnprocessableEntityError, match="text"):
        client.speak("")
    with pytest.raises(UnprocessableEntityError, match="texts"):
        client.batch_speak([f"t{i}" for i in range(11)])


def test_too_long_text_is_too_large(client: TTSClient, url: str) -> None:
    with pytest.raises(TooLargeError) as err:
        client.speak("x" * (MAX_TEXT_CHARS + 1))
    assert err.value.status_code == 413 and str(MAX_TEXT_CHARS) in err.value.message
    too_long = {"text": "x" * (MAX_TEXT_CHARS + 1), "speaker": 0}
    assert err.value.message == server_detail(url, "/speak", too_long)


def test_overload_carries_retry_after(client: TTSClient) -> None:
    with pytest.raises(OverloadedError) as err:
        client.speak("please overload now")
    assert err.value.status_code == 503
    assert err.value.retry_after == 1.0
    assert "overloaded" in err.value.message


def test_stream_speak_yields_a_streaming_wav_in_several_chunks(client: TTSClient) -> None:
    chunks = list(client.stream_speak("A sentence long enough for several frames.", speaker=0))
    data = b"".join(chunks)
    assert len(chunks) > 1
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF  # size unknown while streaming
    samples = (len(data) - 44) // 2
    assert samples % FRAME_SAMPLES == 0 and samples > FRAME_SAMPLES


def test_stream_errors_raise_before_any_bytes(client: TTSClient) -> None:
    with pytest.raises(UnprocessableEntityError):
        next(iter(client.stream_speak("Hi.", speaker=5)))


def test_clone_voice_conversation_and_batch(client: TTSClient, ref_wav: str) -> None:
    assert seconds(client.clone_voice("New words.", ref_wav, "Reference words.")) > 0
    turns = [
        {"speaker": 0, "text": "Hello, how are you?", "pause_ms": 1000},
        {"speaker": 1, "text": "Great, thanks!", "pause_ms": 500},
    ]
    # Both pauses are in the conversation, so it is longer than 1.5 s of silence alone.
    assert seconds(client.generate_conversation(turns)) > 1.5
    texts = ["One.", "Two words here.", "And a third, much longer text."]
    wavs = client.batch_speak(texts, speaker=1)
    lengths = [seconds(w) for w in wavs]
    assert len(wavs) == 3 and lengths == sorted(lengths) and lengths[0] < lengths[2]
    [flac] = client.batch_speak(["One."], response_format="flac", sample_rate=16000)
    assert sf.info(io.BytesIO(flac)).samplerate == 16000


def test_contextual_speak_and_reset_session(client: TTSClient) -> None:
    assert seconds(client.contextual_speak("First turn.", "s-1", speaker=0)) > 0
    assert seconds(client.contextual_speak("Second turn.", "s-1", speaker=1)) > 0
    client.reset_session("s-1")
    client.reset_session("never-used")  # resetting an unknown session is fine


def test_voices_add_list_use_delete(client: TTSClient, ref_wav: str) -> None:
    voice = client.add_voice("narrator", ref_wav, "Reference words.")
    assert voice["id"] and voice["name"] == "narrator"
    assert voice["id"] in [v["id"] for v in client.list_voices()]
    assert seconds(client.speak("With a saved voice.", voice=voice["id"])) > 0
    client.delete_voice(voice["id"])
    assert voice["id"] not in [v["id"] for v in client.list_voices()]
    with pytest.raises(NotFoundError, match=voice["id"]):
        client.delete_voice(voice["id"])
    with pytest.raises(ConflictError, match="built-in voice"):
        client.add_voice("alloy", ref_wav, "Reference words.")


def test_health_and_info(client: TTSClient) -> None:
    assert client.health()["status"] == "ok"
    assert client.info()["sample_rate"] == SAMPLE_RATE


def test_unreachable_server_is_a_connection_error() -> None:
    with TTSClient("http://127.0.0.1:9", timeout=2) as c, \
            pytest.raises(TTSConnectionError, match="cannot reach"):
        c.health()


def test_async_client_matches_the_sync_one(url: str, ref_wav: str) -> None:
    async def run() -> tuple:
        async with AsyncTTSClient(url, timeout=30) as c:
            wav = await c.speak("Hello from asyncio.", speaker=0)
            chunks = [chunk async for chunk in c.stream_speak("Streaming from asyncio, a few frames.")]
            batch = await c.batch_speak(["a", "bb"])
            voice = await c.add_voice("v", ref_wav, "words")
            listed = await c.list_voices()
            await c.delete_voice(voice["id"])
            with pytest.raises(UnprocessableEntityError, match="speaker"):
                await c.speak("x", speaker=3)
            with pytest.raises(UnprocessableEntityError):
                async for _ in c.stream_speak("x", speaker=3):
                    pass
            return wav, chunks, batch, voice, listed

    wav, chunks, batch, voice, listed = asyncio.run(run())
    assert seconds(wav) > 0
    assert len(chunks) > 1 and b"".join(chunks)[:4] == b"RIFF"
    assert len(batch) == 2 and all(seconds(w) > 0 for w in batch)
    assert voice["id"] in [v["id"] for v in listed]


# ---- behaviour that needs exact server answers: an httpx mock transport stands in for the server ------
def _mock(responses: list[httpx.Response], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses.pop(0)

    return httpx.MockTransport(handler)


def test_a_proxys_html_error_page_is_one_line() -> None:
    page = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>nginx</body>\r\n</html>"
    bad_gateway = httpx.Response(502, text=page, headers={"content-type": "text/html"})
    with TTSClient("http://tts.test", transport=_mock([bad_gateway], [])) as c, \
            pytest.raises(ServerError) as err:
        c.speak("hi")
    assert str(err.value) == "HTTP 502: Bad Gateway (an HTML page, from a proxy in front of the service?)"
    assert err.value.detail == page


def test_retries_follow_retry_after_then_succeed() -> None:
    seen: list[httpx.Request] = []
    wav = wav_bytes(np.zeros(FRAME_SAMPLES, dtype=np.float32))
    transport = _mock(
        [
            httpx.Response(503, text="Request dropped due to backpressure (num_queued_requests=3)",
                           headers={"Retry-After": "0"}),
            httpx.Response(200, content=wav, headers={"content-type": "audio/wav"}),
        ],
        seen,
    )
    with TTSClient("http://tts.test", transport=transport, max_retries=2) as c:
        assert c.speak("hi") == wav
    assert len(seen) == 2


def test_a_stream_is_retried_before_its_first_audio_only() -> None:
    seen: list[httpx.Request] = []

    def busy() -> httpx.Response:
        return httpx.Response(503, json={"detail": "no free slot"}, headers={"Retry-After": "0"})

    def audio() -> httpx.Response:
        return httpx.Response(200, content=b"RIFF....WAVE", headers={"content-type": "audio/wav"})

    with TTSClient("http://tts.test", transport=_mock([busy(), audio()], seen), max_retries=2) as c:
        assert b"".join(c.stream_speak("hi")) == b"RIFF....WAVE"
    assert len(seen) == 2

    async def run() -> bytes:
        transport = _mock([busy(), busy(), audio()], seen)
        async with AsyncTTSClient("http://tts.test", transport=transport, max_retries=2) as c:
            return b"".join([chunk async for chunk in c.stream_speak("hi")])

    assert asyncio.run(run()) == b"RIFF....WAVE" and len(seen) == 5
    with TTSClient("http://tts.test", transport=_mock([busy()], []), max_retries=0) as c, \
            pytest.raises(OverloadedError):
        b"".join(c.stream_speak("hi"))


def test_plain_text_overload_keeps_the_message_when_retries_run_out() -> None:
    seen: list[httpx.Request] = []
    body = "Request dropped due to backpressure (num_queued_requests=3, max_queued_requests=2)."
    transport = _mock([httpx.Response(503, text=body, headers={"Retry-After": "0"})] * 2, seen)
    with TTSClient("http://tts.test", transport=transport, max_retries=1) as c, pytest.raises(OverloadedError) as err:
        c.speak("hi")
    assert err.value.message == body and err.value.retry_after == 0.0 and len(seen) == 2


def test_a_2xx_answer_that_is_not_json_is_a_tts_error() -> None:
    page = httpx.Response(200, text="<html>Sign in to continue</html>", headers={"content-type": "text/html"})
    with TTSClient("http://tts.test", transport=_mock([page] * 2, [])) as c:
        with pytest.raises(TTSError, match="/info answered with something other than JSON"):
            c.info()
        with pytest.raises(TTSError, match="Sign in"):
            c.batch_speak(["x"])


def test_unknown_status_is_a_generic_error_with_request_id() -> None:
    transport = _mock([httpx.Response(418, json={"detail": "a teapot"},
                                      headers={"X-Request-ID": "abc"})], [])
    with TTSClient("http://tts.test", transport=transport) as c, pytest.raises(TTSError) as err:
        c.add_voice("n", b"RIFF", "t")
    assert type(err.value) is TTSError
    assert err.value.status_code == 418 and err.value.message == "a teapot"
    assert err.value.request_id == "abc"


def test_a_redirect_is_an_error_naming_the_new_url_not_empty_audio() -> None:
    moved = httpx.Response(301, headers={"Location": "https://tts.test/speak"})
    with TTSClient("http://tts.test", transport=_mock([moved] * 2, [])) as c:
        with pytest.raises(TTSError, match="https://tts.test/speak") as err:
            c.speak("hi")
        assert err.value.status_code == 301
        with pytest.raises(TTSError, match="redirected"):
            b"".join(c.stream_speak("hi"))

    async def run() -> None:
        transport = httpx.MockTransport(lambda request: httpx.Response(308, headers={"Location": "/tts/info"}))
        async with AsyncTTSClient("http://tts.test", transport=transport) as c:
            with pytest.raises(TTSError, match="/tts/info"):
                await c.info()

    asyncio.run(run())


def test_wire_bodies_follow_the_contract() -> None:
    seen: list[httpx.Request] = []
    transport = _mock([httpx.Response(200, content=b"RIFF")] * 2 + [httpx.Response(200, json=["AAAA"])], seen)
    with TTSClient("http://tts.test/", transport=transport) as c:
        c.speak("hi", speaker=1, max_duration_ms=500, seed=7, temperature=0.5)
        c.clone_voice("new", b"ref-bytes", "old")
        assert c.batch_speak(["x"]) == [base64.b64decode("AAAA")]
    import json

    speak, clone, batch = (json.loads(r.content) for r in seen)
    assert speak == {"text": "hi", "speaker": 1, "max_duration_ms": 500, "seed": 7, "temperature": 0.5}
    assert clone["reference_audio_b64"] == base64.b64encode(b"ref-bytes").decode()
    assert clone["max_duration_ms"] == 20000
    assert batch == {"texts": ["x"], "speaker": 0, "max_duration_per_text_ms": 10000}
    assert [r.url.path for r in seen] == ["/speak", "/clone_voice", "/batch_speak"]


def test_parse_retry_after_accepts_seconds_and_dates() -> None:
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a past date means now
