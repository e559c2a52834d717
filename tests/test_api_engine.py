"""The API in-process on the real tiny engine (random weights): every layer together, no fakes."""

import base64
import io

import av
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from serve_app.api.app import create_app
from serve_app.api.settings import ApiSettings
from serve_app.engine.types import FRAME_SAMPLES, SAMPLE_RATE, trace_hops
from tests.support_api import read_wav, wav_b64


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from serve_app.engine.engine import Engine

    engine = Engine.from_preset("tiny-random", device="cpu")
    app = create_app(engine, ApiSettings(voices_dir=tmp_path_factory.mktemp("voices")))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    engine.close()


def _wav(response, whole_frames: bool = True) -> tuple:
    assert response.status_code == 200, response.text
    pcm, rate, channels = read_wav(response.content)
    assert (rate, channels) == (SAMPLE_RATE, 1)
    if whole_frames:
        assert len(pcm) % FRAME_SAMPLES == 0  # whole Mimi frames
    return pcm, rate


def test_health_and_info(client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["model"] == "tiny-random" and info["sample_rate"] == SAMPLE_RATE
    assert info["random_weights"] is True and "noise" in info["notice"]
    assert info["model"] in info["notice"], "the notice names the model (tiny or full-size)"


def test_speak_within_the_limit_and_cached_by_seed(client) -> None:
    body = {"text": "Hello from the tiny model.", "max_duration_ms": 400, "seed": 3}
    first = client.post("/speak", json=body)
    pcm, rate = _wav(first)
    assert 0 < len(pcm) / rate <= 0.4
    second = client.post("/speak", json=body)
    assert second.headers["x-cache"] == "hit" and second.content == first.content


def test_stream(client) -> None:
    r = client.post("/speak", json={"text": "Streaming now.", "max_duration_ms": 320, "stream": True})
    assert r.content[40:44] == b"\xff\xff\xff\xff"
    pcm, rate = _wav(r)
    assert 0 < len(pcm) / rate <= 0.32


def test_conversation_with_generated_codes_as_context(client) -> None:
    # long pauses keep the speech budget (and the test) short: 5000 - 2 * 2000 ms shared by 3 turns
    turns = [{"speaker": i % 2, "text": f"Turn {i}.", "pause_ms": 2000} for i in range(3)]
    response = client.post("/conversation", json={"turns": turns, "max_total_duration_ms": 5000})
    pcm, rate = _wav(response, whole_frames=False)
    assert 4.0 < len(pcm) / rate <= 5.0


def test_saved_voice_encoded_by_mimi_then_used(client) -> None:
    created = client.post(
        "/v1/voices", json={"name": "ref", "audio_b64": wav_b64(0.5), "transcript": "A tone."}
    )
    assert created.status_code == 201, created.text
    assert created.json()["frames"] == 7  # ceil(12000 / 1920)
    voice = created.json()["id"]
    _wav(client.post("/speak", json={"text": "In that voice.", "voice": voice, "max_duration_ms": 320}))


def test_a_reference_the_prompt_cannot_hold_is_413_not_another_voice(client) -> None:
    """The model's 2048 positions hold the reference's text and frames, the text and the audio asked
    for: a reference that leaves no room is refused, where the engine would once have dropped it and
    answered 200 in a voice of its own."""
    transcript = "word " * 380  # a position a byte for the tiny model's tokenizer
    body = {"text": "Hello there.", "reference_text": transcript, "reference_audio_b64": wav_b64(5.0)}
    r = client.post("/clone_voice", json={**body, "max_duration_ms": 10_000})
    assert r.status_code == 413 and "reference takes" in r.json()["detail"], r.text
    long_voice = {"name": "long", "audio_b64": wav_b64(5.0), "transcript": transcript}
    voice = client.post("/v1/voices", json=long_voice).json()["id"]
    r = client.post("/speak", json={"text": "Hello there.", "voice": voice, "max_duration_ms": 10_000})
    assert r.status_code == 413 and "reference takes" in r.json()["detail"], r.text
    ok = client.post("/clone_voice", json={**body, "max_duration_ms": 1000})  # room once less audio is asked
    _wav(ok)
    assert ok.headers["x-context-dropped-turns"] == "0"


def test_batch_speak_takes_the_output_options(client) -> None:
    """As every endpoint that returns audio: format, rate and speed apply to each item."""
    body = {"texts": ["One.", "Two."], "max_duration_per_text_ms": 1000}
    plain = client.post("/batch_speak", json=body).json()
    r = client.post("/batch_speak", json={**body, "response_format": "flac", "sample_rate": 16000, "speed": 2.0})
    assert r.status_code == 200, r.text
    for item, wav in zip(r.json(), plain):
        pcm, rate = sf.read(io.BytesIO(base64.b64decode(item)))
        assert rate == 16000
        assert abs(len(pcm) / rate - read_wav(base64.b64decode(wav))[0].size / SAMPLE_RATE / 2) < 0.02


def test_batch_and_openai_mp3(client) -> None:
    r = client.post("/batch_speak", json={"texts": ["One.", "Two."], "max_duration_per_text_ms": 1000})
    assert r.status_code == 200 and len(r.json()) == 2
    for item in r.json():
        assert read_wav(base64.b64decode(item))[1] == SAMPLE_RATE
    mp3 = client.post(
        "/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": "nova", "max_duration_ms": 400}
    )
    assert mp3.status_code == 200 and mp3.headers["content-type"] == "audio/mpeg"
    with av.open(io.BytesIO(mp3.content)) as container:
        assert container.streams.audio[0].codec_context.sample_rate == SAMPLE_RATE


def test_a_stream_reports_its_first_audio_times(client) -> None:
    """Server-Timing: ms to first audio in the app (from the request's arrival), at the API and at
    the engine (the hops between them are the differences), the engine's time to the request's
    first step (`admit`) and, of it, to its sequence queued for the loop (`queue`); each includes
    the next."""
    r = client.post("/speak", json={"text": "Timed stream.", "max_duration_ms": 240, "stream": True})
    assert r.status_code == 200
    timings = dict(part.strip().split(";dur=") for part in r.headers["server-timing"].split(","))
    assert set(timings) == {"app", "api", "engine", "admit", "queue", "in_engine", "out_engine"}
    ms = {name: float(value) for name, value in timings.items()}
    assert 0 < ms["admit"] <= ms["engine"] <= ms["api"] <= ms["app"]
    assert 0 <= ms["queue"] <= ms["admit"]
    # The API's first audio is the way into the engine, the engine's own and the first chunk's way out.
    assert ms["in_engine"] >= 0 and ms["out_engine"] >= 0
    assert ms["in_engine"] + ms["engine"] + ms["out_engine"] == pytest.approx(ms["api"], abs=1.0)
    whole = client.post("/speak", json={"text": "Timed stream.", "max_duration_ms": 240, "seed": 1})
    assert "server-timing" not in whole.headers  # a whole file has no first audio to time


def test_trace_hops_are_the_gaps_between_consecutive_layers() -> None:
    """engine → relay → api: the request's way in to each layer and the first chunk's way out."""
    trace = (("engine", 10.010, 10.040), ("relay", 10.004, 10.043), ("api", 10.000, 10.050))
    hops = trace_hops(trace)
    assert hops.keys() == {"in_engine", "out_engine", "in_relay", "out_relay"}
    assert hops["in_relay"] == pytest.approx(4.0) and hops["out_relay"] == pytest.approx(7.0)
    assert hops["in_engine"] == pytest.approx(6.0) and hops["out_engine"] == pytest.approx(3.0)
    assert trace_hops(trace[:1]) == {} and trace_hops(()) == {}
