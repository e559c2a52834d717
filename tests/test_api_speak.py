"""/speak, /clone_voice and /batch_speak on the fake engine: what comes back and what the engine was asked."""

import base64

import numpy as np
import pytest

from serve_app.engine.types import FRAME_SAMPLES, SAMPLE_RATE
from tests.support_api import FakeEngine, make_client, on_event_loop, read_wav, wav_b64


def test_speak_returns_24k_mono_wav_attachment(client, engine) -> None:
    r = client.post("/speak", json={"text": "Hello there, how are you?", "max_duration_ms": 800})
    assert r.status_code == 200
    assert r.headers["content-type"] == "audio/wav"
    assert r.headers["content-disposition"].startswith("attachment;")
    pcm, rate, channels = read_wav(r.content)
    assert (rate, channels) == (SAMPLE_RATE, 1)
    assert 0 < len(pcm) / rate <= 0.8
    assert len(pcm) == engine.frames_for(engine.requests[0]) * FRAME_SAMPLES
    [request] = engine.requests
    assert request.speaker == 1 and request.max_audio_length_ms == 800  # original design's default speaker


def test_text_is_normalized_unless_opted_out(client, engine) -> None:
    client.post("/speak", json={"text": "Dr. Smith paid $3.50!!!"})
    client.post("/speak", json={"text": "Dr. Smith paid $3.50!!!", "normalize": False})
    assert engine.requests[0].text == "Doctor Smith paid three dollars and fifty cents!"
    assert engine.requests[1].text == "Dr. Smith paid $3.50!!!"


def test_sampling_options_reach_the_engine(client, engine) -> None:
    client.post("/speak", json={"text": "Hi", "seed": 7, "temperature": 0.5, "top_k": 1, "speaker": 0})
    [request] = engine.requests
    assert (request.sampling.seed, request.sampling.temperature, request.sampling.top_k) == (7, 0.5, 1)
    assert request.speaker == 0 and request.request_id


def test_null_context_is_no_context(client, engine) -> None:
    """The original design's client defaults `context` to None and may send it as null."""
    r = client.post("/speak", json={"text": "Hello", "context": None})
    assert r.status_code == 200, r.text
    assert engine.requests[-1].context == []


def test_context_audio_is_decoded_to_24k_mono(client, engine) -> None:
    context = [{"text": "Earlier turn", "speaker": 0, "audio_b64": wav_b64(0.5, rate=16_000, channels=2)}]
    assert client.post("/speak", json={"text": "Reply", "context": context}).status_code == 200
    [segment] = engine.requests[0].context
    assert segment.text == "Earlier turn" and segment.speaker == 0
    assert segment.audio.dtype == np.float32 and segment.audio.ndim == 1
    assert len(segment.audio) == SAMPLE_RATE // 2


@pytest.mark.parametrize("fmt", ["flac", "mp3", "pcm"])
def test_speak_other_formats(client, fmt) -> None:
    r = client.post("/speak", json={"text": "Hello", "response_format": fmt})
    assert r.status_code == 200 and r.content
    assert r.headers["content-disposition"].endswith(f'speech.{fmt}"')


def test_quality_check_retries_with_new_seeds(tmp_path) -> None:
    engine = FakeEngine(bad_attempts=2)
    r = make_client(tmp_path, engine).post(
        "/speak", json={"text": "Hello there", "quality_check": True, "seed": 10}
    )
    assert r.status_code == 200
    assert [q.sampling.seed for q in engine.requests] == [10, 11, 12]
    assert np.abs(read_wav(r.content)[0]).max() > 0.1  # the good third attempt, not a silent one


@pytest.mark.parametrize("kind", ["silent", "clipped"])
def test_quality_check_gives_up_with_an_explanation(tmp_path, kind) -> None:
    engine = FakeEngine(bad_attempts=10, bad_kind=kind)
    client = make_client(tmp_path, engine)
    r = client.post("/speak", json={"text": "Hello there", "quality_check": True})
    assert r.status_code == 500
    assert "3 attempts" in r.json()["detail"] and kind in r.json()["detail"]
    assert len(engine.requests) == 3


def test_quality_check_accepts_a_one_word_text_shorter_than_half_a_second(tmp_path) -> None:
    engine = FakeEngine()
    r = make_client(tmp_path, engine).post("/speak", json={"text": "0", "quality_check": True})
    assert r.status_code == 200, r.text
    assert len(read_wav(r.content)[0]) / SAMPLE_RATE < 0.5 and len(engine.requests) == 1


def test_without_quality_check_bad_audio_is_returned(tmp_path) -> None:
    engine = FakeEngine(bad_attempts=1)
    assert make_client(tmp_path, engine).post("/speak", json={"text": "Hello"}).status_code == 200
    assert len(engine.requests) == 1


def test_stream_yields_chunks_as_they_are_generated(client, engine) -> None:
    engine.release_stream.clear()  # the engine holds after its first chunk
    text = "A longer sentence so that there are several chunks to stream."
    with client.stream("POST", "/speak", json={"text": text, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        parts = r.iter_raw()
        first = next(parts)
        assert engine.chunks_yielded == 1  # first bytes left while generation is still on hold
        assert first[:4] == b"RIFF" and first[40:44] == b"\xff\xff\xff\xff"
        engine.release_stream.set()
        rest = list(parts)
    assert len(rest) >= 2
    pcm, rate, _ = read_wav(first + b"".join(rest))
    assert rate == SAMPLE_RATE and len(pcm) == engine.frames_for(engine.requests[0]) * FRAME_SAMPLES


def test_stream_pcm_is_raw_16_bit(client, engine) -> None:
    r = client.post("/speak", json={"text": "Hello there", "stream": True, "response_format": "pcm"})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/pcm"
    assert len(r.content) == engine.frames_for(engine.requests[0]) * FRAME_SAMPLES * 2


def test_stream_closed_by_client_cancels_generation(client, engine) -> None:
    engine.release_stream.clear()
    with client.stream("POST", "/speak", json={"text": "A long text " * 10, "stream": True}) as r:
        next(r.iter_raw())
    engine.release_stream.set()
    assert engine.streams_closed_early == 1


def test_stream_and_quality_check_conflict(client) -> None:
    r = client.post("/speak", json={"text": "Hi", "stream": True, "quality_check": True})
    assert r.status_code == 422 and "quality_check" in r.text


def test_clone_voice_uses_reference_as_speaker_0_context(client, engine) -> None:
    r = client.post(
        "/clone_voice",
        json={
            "text": "New words",
            "reference_audio_b64": wav_b64(1.0),
            "reference_text": "Old words",
            "max_duration_ms": 1000,
        },
    )
    assert r.status_code == 200
    pcm, rate, _ = read_wav(r.content)
    assert len(pcm) / rate <= 1.0
    [request] = engine.requests
    assert request.speaker == 0
    [reference] = request.context
    assert reference.text == "Old words" and len(reference.audio) == SAMPLE_RATE


def test_clone_voice_needs_a_reference(client) -> None:
    r = client.post("/clone_voice", json={"text": "New words"})
    assert r.status_code == 422 and "reference_audio_b64" in r.text


def test_batch_keeps_input_order_and_runs_concurrently(tmp_path) -> None:
    engine = FakeEngine(delay_s=0.05)
    texts = ["one", "a somewhat longer second text", "three three", "four"]
    r = make_client(tmp_path, engine).post("/batch_speak", json={"texts": texts, "speaker": 1})
    assert r.status_code == 200
    lengths = [len(read_wav(base64.b64decode(b))[0]) for b in r.json()]
    expected = [min(10_000 // 80, 4 + len(t) // 3) * FRAME_SAMPLES for t in texts]
    assert lengths == expected
    assert engine.max_in_flight == len(texts)  # all submitted at once so the engine can batch them
    assert {q.speaker for q in engine.requests} == {1}


def test_ten_long_batch_texts_are_normalized_off_the_event_loop(tmp_path, monkeypatch) -> None:
    """Ten texts near the limit take tens of ms to normalize: in the thread pool, as a long /speak text's
    plan; a short batch stays on the loop (the hop would only delay its engine calls)."""
    from serve_app.api import synthesis

    on_loop: list[bool] = []
    normalize = synthesis.normalize_text

    def recording(text: str) -> str:
        on_loop.append(on_event_loop())
        return normalize(text)

    monkeypatch.setattr(synthesis, "normalize_text", recording)
    client = make_client(tmp_path, FakeEngine(max_prompt_chars=100_000))
    long = "Dr. Smith paid $3.50 for 12 teas on Jan. 5th, at 10:30 am. " * 60
    r = client.post("/batch_speak", json={"texts": [long] * 10, "max_duration_per_text_ms": 1000})
    assert r.status_code == 200, r.text
    assert len(r.json()) == 10 and read_wav(base64.b64decode(r.json()[0]))[1] == SAMPLE_RATE
    assert on_loop == [False] * 10
    on_loop.clear()
    assert client.post("/batch_speak", json={"texts": ["One.", "Two."]}).status_code == 200
    assert on_loop == [True, True]


def test_a_short_text_reaches_the_engine_without_a_thread_pool_hop(client, engine, monkeypatch) -> None:
    """Each hop to the thread pool and back delays a request's engine call behind the event loop's
    other work; a short text's planning and the services lookup take none, a long text's planning
    still runs in the pool (off the event loop)."""
    import fastapi.dependencies.utils as fastapi_deps

    from serve_app.api import synthesis

    hops: list[str] = []

    def counting(module, name: str):
        hop = getattr(module, name)

        async def counted(func, *args, **kwargs):
            hops.append(getattr(getattr(func, "func", func), "__qualname__", "?"))
            return await hop(func, *args, **kwargs)

        monkeypatch.setattr(module, name, counted)

    counting(fastapi_deps, "run_in_threadpool")
    counting(synthesis, "run_in_threadpool")
    short = "Dr. Smith paid $3.50 for the tea."
    assert client.post("/speak", json={"text": short, "stream": True, "response_format": "pcm"}).status_code == 200
    assert hops == []
    assert engine.requests[-1].text.startswith("Doctor Smith paid three dollars")
    long = " ".join([short] * (synthesis.INLINE_PLAN_CHARS // len(short) + 1))
    assert client.post("/speak", json={"text": long, "stream": True, "response_format": "pcm"}).status_code == 200
    assert [h for h in hops if "plan" in h] == ["Synthesizer.script.<locals>.plan"]
