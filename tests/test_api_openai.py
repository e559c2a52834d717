"""OpenAI-compatible speech: formats decoded by PyAV, voices, speed, SSE, and the official SDK."""

import base64
import io
import json

import av
import openai
import pytest
import soundfile as sf

from serve_app.api.app import create_app
from serve_app.api.settings import ApiSettings
from serve_app.engine.types import FRAME_SAMPLES, SAMPLE_RATE
from tests.support_api import FakeEngine, serve_over_http

TEXT = "The quick brown fox jumps over the lazy dog near the river bank."


def _speech(client, **body):
    return client.post("/v1/audio/speech", json={"model": "tts-1", "input": TEXT, "voice": "alloy", **body})


def _decode(data: bytes) -> tuple[int, int, float]:
    """(sample rate, channels, seconds) as FFmpeg reads the bytes."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return (
            stream.codec_context.sample_rate,
            stream.codec_context.channels,
            samples / stream.codec_context.sample_rate,
        )


@pytest.mark.parametrize(
    ("fmt", "content_type", "rate"),
    [
        ("mp3", "audio/mpeg", 24_000),
        ("opus", "audio/opus", 48_000),
        ("aac", "audio/aac", 24_000),
        ("flac", "audio/flac", 24_000),
        ("wav", "audio/wav", 24_000),
    ],
)
def test_formats_decode_with_pyav(client, engine, fmt, content_type, rate) -> None:
    r = _speech(client, response_format=fmt)
    assert r.status_code == 200 and r.headers["content-type"] == content_type
    decoded_rate, channels, seconds = _decode(r.content)
    assert (decoded_rate, channels) == (rate, 1)  # Opus always decodes at 48 kHz
    expected = engine.frames_for(engine.requests[-1]) * FRAME_SAMPLES / SAMPLE_RATE
    assert abs(seconds - expected) < 0.1


def test_default_format_is_mp3(client) -> None:
    assert _speech(client).headers["content-type"] == "audio/mpeg"


def test_pcm_is_24k_16_bit_mono(client, engine) -> None:
    r = _speech(client, response_format="pcm")
    assert r.headers["content-type"] == "audio/pcm"
    assert len(r.content) == engine.frames_for(engine.requests[-1]) * FRAME_SAMPLES * 2


@pytest.mark.parametrize(
    ("voice", "speaker"), [("alloy", 0), ("nova", 1), ("0", 0), ("1", 1), ("Shimmer", 1)]
)
def test_voices_map_to_speakers(client, engine, voice, speaker) -> None:
    assert _speech(client, voice=voice).status_code == 200
    assert engine.requests[-1].speaker == speaker


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_speed_changes_duration(client, engine, speed) -> None:
    r = _speech(client, response_format="pcm", speed=speed)
    natural = engine.frames_for(engine.requests[-1]) * FRAME_SAMPLES
    assert abs(len(r.content) / 2 / natural - 1 / speed) < 0.05


def test_max_duration_extra_reaches_the_engine(client, engine) -> None:
    assert _speech(client, max_duration_ms=400).status_code == 200
    assert engine.requests[-1].max_audio_length_ms == 400
    assert _speech(client, max_duration_ms=4 * 3600 * 1000 + 1).status_code == 422


def test_instructions_are_accepted(client) -> None:
    assert _speech(client, instructions="Speak cheerfully.").status_code == 200


def test_sse_stream_has_deltas_then_done(client, engine) -> None:
    r = _speech(client, response_format="pcm", stream_format="sse")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(r.text)
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done"
    assert len(events) - 1 >= 2
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(audio) == engine.frames_for(engine.requests[-1]) * FRAME_SAMPLES * 2


def _sse_events(text: str) -> list[dict]:
    return [json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("speed", [1.0, 2.0])
def test_sse_done_event_carries_usage(client, engine, speed) -> None:
    r = _speech(client, response_format="pcm", stream_format="sse", speed=speed)
    *deltas, done = _sse_events(r.text)
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_characters"] == len(TEXT)
    assert usage["output_audio_seconds"] == pytest.approx(len(audio) / 2 / SAMPLE_RATE, abs=1e-3)
    natural = engine.frames_for(engine.requests[-1]) * FRAME_SAMPLES / SAMPLE_RATE
    assert usage["output_audio_seconds"] == pytest.approx(natural / speed, rel=0.05)


def test_models_lists_served_model_and_aliases(client) -> None:
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids[0] == "fake-csm" and "tts-1" in ids


@pytest.mark.parametrize("model_id", ["fake-csm", "tts-1", "gpt-4o-mini-tts"])
def test_models_by_id(client, model_id) -> None:
    r = client.get(f"/v1/models/{model_id}")
    assert r.status_code == 200
    assert r.json() == {"id": model_id, "object": "model", "created": 0, "owned_by": "sesame"}


@pytest.mark.parametrize("model_id", ["whisper-1", "sesame/csm-1b", "tts-1/extra"])
def test_unknown_model_is_404_with_an_openai_error(client, model_id) -> None:
    r = client.get(f"/v1/models/{model_id}")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error" and model_id in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"voice": "nobody"}, 400),
        ({"speed": 5.0}, 422),
        ({"response_format": "ogg"}, 422),
        ({"input": ""}, 422),
        ({"input": "x" * 100_001}, 413),
    ],
)
def test_bad_requests_carry_openai_error_objects(client, body, status) -> None:
    r = _speech(client, **body)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_official_sdk_formats_usage_and_models(tmp_path) -> None:
    """The openai package over real HTTP: extras through extra_body, SSE usage, model lookup."""
    engine = FakeEngine()
    app = create_app(engine, ApiSettings(voices_dir=tmp_path))
    with serve_over_http(app) as base_url:
        sdk = openai.OpenAI(api_key="unused", base_url=f"{base_url}/v1", max_retries=0)
        # FLAC from the SDK is a complete file: libsndfile reads it with its length
        audio = sdk.audio.speech.create(model="tts-1", voice="coral", input=TEXT, response_format="flac")
        pcm, rate = sf.read(io.BytesIO(audio.content))
        assert rate == SAMPLE_RATE
        assert len(pcm) == engine.frames_for(engine.requests[-1]) * FRAME_SAMPLES
        # ElevenLabs-style names and sample rates ride in extra_body
        audio = sdk.audio.speech.create(
            model="tts-1", voice="coral", input=TEXT, response_format="mp3",
            extra_body={"sample_rate": 16000, "seed": 3},
        )
        assert _decode(audio.content)[0] == 16000
        audio = sdk.audio.speech.create(
            model="tts-1", voice="coral", input=TEXT, extra_body={"output_format": "ulaw_8000"}
        )
        assert audio.response.headers["content-type"] == "audio/basic"
        assert len(audio.content) == engine.frames_for(engine.requests[-1]) * FRAME_SAMPLES // 3
        # SSE: deltas, then a done event with the usage
        with sdk.audio.speech.with_streaming_response.create(
            model="tts-1", voice="echo", input=TEXT, response_format="pcm", stream_format="sse", speed=2.0
        ) as streamed:
            events = _sse_events("\n".join(streamed.iter_lines()))
        *deltas, done = events
        seconds = len(b"".join(base64.b64decode(e["audio"]) for e in deltas)) / 2 / SAMPLE_RATE
        assert done == {
            "type": "speech.audio.done",
            "usage": {"input_characters": len(TEXT), "output_audio_seconds": round(seconds, 3)},
            "finish_reason": "end_of_audio",
        }
        # models by id
        assert sdk.models.retrieve("tts-1").id == "tts-1"
        assert sdk.models.retrieve("fake-csm").owned_by == "sesame"
        with pytest.raises(openai.NotFoundError, match="model 'whisper-1' not found"):
            sdk.models.retrieve("whisper-1")
        with pytest.raises(openai.UnprocessableEntityError, match="opus cannot encode at 44100 Hz"):
            sdk.audio.speech.create(
                model="tts-1", voice="coral", input=TEXT, response_format="opus", extra_body={"sample_rate": 44100}
            )


def test_official_sdk_round_trip(tmp_path) -> None:
    """The openai package, unmodified, against the app over real HTTP."""
    app = create_app(FakeEngine(), ApiSettings(voices_dir=tmp_path))
    with serve_over_http(app) as base_url:
        sdk = openai.OpenAI(api_key="unused", base_url=f"{base_url}/v1", max_retries=0)
        audio = sdk.audio.speech.create(model="tts-1", voice="coral", input=TEXT, response_format="wav")
        rate, channels, seconds = _decode(audio.content)
        assert (rate, channels) == (SAMPLE_RATE, 1) and seconds > 0.5
        with sdk.audio.speech.with_streaming_response.create(
            model="tts-1", voice="echo", input=TEXT, response_format="pcm"
        ) as streamed:
            assert len(b"".join(streamed.iter_bytes())) > 0
        assert "tts-1" in [m.id for m in sdk.models.list()]
        with pytest.raises(openai.BadRequestError, match="unknown voice"):
            sdk.audio.speech.create(model="tts-1", voice="nobody", input=TEXT)
