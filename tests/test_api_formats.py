"""Every output format at every sample rate through the API: complete files when not streamed, streams
read as documented, ElevenLabs-style names, and contradictions refused."""

import io

import av
import pytest

from serve_app.audio.formats import AUDIO_FORMATS, OPUS_RATES, SAMPLE_RATES, OutputFormat
from serve_app.engine.types import FRAME_SAMPLES, SAMPLE_RATE
from tests.support_api import FakeEngine, SilentModel, make_client, wav_b64
from tests.support_formats import (
    CODEC_PADDING,
    SOUNDFILE_UNREADABLE,
    expected_decoded_rate,
    longest_silence_s,
    read_pyav,
    read_soundfile,
)

TEXT = "Formats for every pipeline, at every rate."
ALL_OUTPUTS = [
    OutputFormat(codec, rate)  # type: ignore[arg-type]
    for codec in AUDIO_FORMATS
    for rate in SAMPLE_RATES
    if codec != "opus" or rate in OPUS_RATES
]


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def client(tmp_path, engine):
    return make_client(tmp_path, engine)


def _seconds(engine: FakeEngine) -> float:
    return engine.frames_for(engine.requests[-1]) * FRAME_SAMPLES / SAMPLE_RATE


def _check(data: bytes, output: OutputFormat, seconds: float, streamed: bool) -> None:
    """Both readers (FFmpeg always; libsndfile where it can) see the rate and the duration."""
    padding = CODEC_PADDING.get(output.codec, 0) if streamed or output.codec == "aac" else 0
    readers = [("pyav", read_pyav)]
    if output.codec not in SOUNDFILE_UNREADABLE and (output.streams_as_file or not streamed):
        readers.append(("soundfile", read_soundfile))
    for name, read in readers:
        decoded = read(data, output)
        rate = expected_decoded_rate(output, name)
        assert decoded.sample_rate == rate, name
        expected = round(seconds * rate)
        assert expected <= len(decoded.samples) <= expected + padding * rate // output.sample_rate, name
        assert abs(decoded.samples).max() > 0.1, name  # the tone, not silence


@pytest.mark.parametrize("output", ALL_OUTPUTS, ids=lambda o: o.name)
def test_speak_returns_a_complete_file_in_every_format_and_rate(client, engine, output) -> None:
    r = client.post(
        "/speak", json={"text": TEXT, "response_format": output.codec, "sample_rate": output.sample_rate}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == output.content_type
    assert r.headers["content-disposition"].endswith(f'speech.{output.codec}"')
    _check(r.content, output, _seconds(engine), streamed=False)


@pytest.mark.parametrize("output", [o for o in ALL_OUTPUTS if o.sample_rate in (8000, 44100, 48000)],
                         ids=lambda o: o.name)
def test_streamed_speak_in_every_format(client, engine, output) -> None:
    with client.stream(
        "POST", "/speak", json={"text": TEXT, "stream": True, "output_format": output.name}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"] == output.content_type
        data = b"".join(r.iter_bytes())
    _check(data, output, _seconds(engine), streamed=True)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mp3_44100_128", OutputFormat("mp3", 44100, 128)),
        ("pcm_16000", OutputFormat("pcm", 16000)),
        ("ulaw_8000", OutputFormat("ulaw", 8000)),
        ("alaw_8000", OutputFormat("alaw", 8000)),
        ("opus_48000_64", OutputFormat("opus", 48000, 64)),
    ],
)
@pytest.mark.parametrize("path", ["/speak", "/v1/audio/speech"])
def test_elevenlabs_output_format_names(client, engine, path, name, expected) -> None:
    body = {"output_format": name, "seed": 1}
    body |= {"text": TEXT} if path == "/speak" else {"model": "tts-1", "input": TEXT, "voice": "alloy"}
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == expected.content_type
    _check(r.content, expected, _seconds(engine), streamed=False)
    if expected.kbps:  # the bitrate was used: size ~ kbps x seconds
        assert len(r.content) * 8 / _seconds(engine) / 1000 == pytest.approx(expected.kbps, rel=0.4)


def test_telephony_formats_default_to_8_khz(client, engine) -> None:
    for codec in ("ulaw", "alaw"):
        r = client.post("/speak", json={"text": TEXT, "response_format": codec})
        assert r.status_code == 200
        assert len(r.content) == round(_seconds(engine) * 8000)  # one byte per 8 kHz sample


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"response_format": "wav", "output_format": "mp3_44100_128"}, "contradicts output_format"),
        ({"sample_rate": 16000, "output_format": "pcm_8000"}, "sample_rate 16000 contradicts"),
        ({"output_format": "opus_44100"}, "opus cannot encode at 44100 Hz"),
        ({"response_format": "opus", "sample_rate": 22050}, "opus cannot encode at 22050 Hz"),
        ({"output_format": "wav_11025"}, "11025 Hz is not offered"),
        ({"output_format": "pcm_0"}, "0 Hz is not offered"),
        ({"output_format": "pcm_16000_64"}, "pcm has no bitrate"),
        ({"output_format": "opus_48000_320"}, "opus encodes mono at most at 256 kbit/s"),  # not a 500
        ({"sample_rate": 11025}, "sample_rate"),
        ({"response_format": "ogg"}, "response_format"),
    ],
)
@pytest.mark.parametrize("path", ["/speak", "/v1/audio/speech"])
def test_contradictions_and_impossible_formats_are_422(client, engine, path, body, message) -> None:
    body |= {"text": TEXT} if path == "/speak" else {"model": "tts-1", "input": TEXT, "voice": "alloy"}
    r = client.post(path, json=body)
    assert r.status_code == 422
    assert message in str(r.json()["detail"])
    assert engine.requests == []


@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_openai_flac_is_a_complete_file_that_libsndfile_reads(client, engine, rate) -> None:
    """No seed, so OpenAI's endpoint streams, except FLAC: it is sent whole, header with length."""
    r = client.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": "flac", "sample_rate": rate},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "audio/flac"
    _check(r.content, OutputFormat("flac", rate), _seconds(engine), streamed=False)


@pytest.mark.parametrize("output", [o for o in ALL_OUTPUTS if o.sample_rate in (8000, 24000)],
                         ids=lambda o: o.name)
def test_openai_unseeded_answers_read_with_both_readers(client, engine, output) -> None:
    r = client.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "input": TEXT, "voice": "alloy", "output_format": output.name},
    )
    assert r.status_code == 200, r.text
    _check(r.content, output, _seconds(engine), streamed=output.streams_as_file)


@pytest.mark.parametrize("path", ["/conversation", "/clone_voice", "/contextual_speak"])
def test_every_audio_endpoint_takes_formats_and_speed(client, engine, path) -> None:
    body = {
        "/conversation": {"turns": [{"speaker": 0, "text": TEXT, "pause_ms": 0}]},
        "/clone_voice": {"text": TEXT, "reference_audio_b64": wav_b64(1.0), "reference_text": "Ref."},
        "/contextual_speak": {"text": TEXT, "session_id": "s1"},
    }[path]
    r = client.post(path, json={**body, "output_format": "pcm_16000", "speed": 2.0})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/pcm"
    samples = len(r.content) // 2
    assert samples / 16000 == pytest.approx(_seconds(engine) / 2, rel=0.05)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("codec", ["mp3", "opus", "aac", "flac"])
def test_an_utterance_with_no_audio_is_a_file_ffmpeg_decodes(tmp_path, codec, stream) -> None:
    """A model may end an utterance at its first frame: mp3, opus and aac bodies were 0 bytes, which no
    decoder opens, and libsndfile refused the FLAC (its sample count of 0 means "unknown")."""
    client = make_client(tmp_path, SilentModel())
    r = client.post("/speak", json={"text": "Hm.", "response_format": codec, "stream": stream})
    assert r.status_code == 200, r.text
    output = OutputFormat.default(codec)
    if not stream and codec not in SOUNDFILE_UNREADABLE:  # libsndfile refused an empty FLAC too
        assert len(read_soundfile(r.content, output).samples) > 0
    with av.open(io.BytesIO(r.content)) as container:
        audio = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(audio))
        rate = audio.codec_context.sample_rate
    assert 0 < samples / rate <= longest_silence_s(output) + 1e-9
