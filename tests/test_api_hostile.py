"""Hostile input against the API: broken, lying and abusive audio and JSON, all generated here.

Every refused case must be a 4xx whose `detail` names the field or the limit (never a 5xx, never
unbounded decoding), and the same app must serve a normal request right afterwards. Some inputs look
hostile but are usable and must be accepted, decoded to exactly what they hold: a WAV whose chunk sizes
claim gigabytes (streamed WAVs, this service's own included, carry such sizes), a one-sample clip, and
8 channels at 192 kHz within the byte and duration caps (downmixed, band-limited and resampled).
"""

from __future__ import annotations

import base64
import functools
import io
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from serve_app.audio.decode import MAX_CHANNELS, MAX_SAMPLE_RATE
from serve_app.engine.types import SAMPLE_RATE
from tests.support_api import FakeEngine, make_client, serve_over_http, wav_b64

# The limits under test, set explicitly so the expected messages do not depend on CSM_* variables.
MAX_AUDIO_BYTES = 10 * 1024 * 1024
MAX_AUDIO_SECONDS = 60.0
MAX_TEXT_CHARS = 4096
MAX_LONG_TEXT_CHARS = 100_000
MAX_CONTEXT_TURNS = 16
MAX_BODY_BYTES = 32 * 1024 * 1024
LIMITS = {
    "max_audio_bytes": MAX_AUDIO_BYTES,
    "max_audio_seconds": MAX_AUDIO_SECONDS,
    "max_text_chars": MAX_TEXT_CHARS,
    "max_long_text_chars": MAX_LONG_TEXT_CHARS,
    "max_context_turns": MAX_CONTEXT_TURNS,
    "max_body_bytes": MAX_BODY_BYTES,
}

GOOD: dict[str, dict[str, Any]] = {
    "/speak": {"text": "Hello"},
    "/clone_voice": {"text": "Hello", "reference_audio_b64": wav_b64(0.5), "reference_text": "Ref"},
    "/v1/voices": {"name": "v", "audio_b64": wav_b64(0.5), "transcript": "Ref"},
}
ACCEPTED = {"/speak": 200, "/clone_voice": 200, "/v1/voices": 201}


@pytest.fixture
def client(tmp_path: Path, engine: FakeEngine) -> TestClient:
    return make_client(tmp_path, engine, **LIMITS)


def detail_of(response: httpx.Response) -> str:
    """The error's `detail` as text: a message, or the validation errors' locations and messages."""
    detail = response.json()["detail"]
    if isinstance(detail, str):
        return detail
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in detail)


def assert_still_serves(client: TestClient, path: str) -> None:
    ok = client.post(path, json=GOOD[path])
    assert ok.status_code == ACCEPTED[path], ok.text
    assert client.post("/speak", json=GOOD["/speak"]).status_code == 200


# ---------------------------------------------------------------------------------------------------
# The audio corpus
# ---------------------------------------------------------------------------------------------------
def _wav(data: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def _half_second() -> bytes:
    """A 100 Hz square wave at ±0.25 (sound: a constant level would be silence to a voice reference)."""
    square = np.sign(np.sin(2 * np.pi * 100 * (np.arange(SAMPLE_RATE // 2) + 0.5) / SAMPLE_RATE))
    return _wav((0.25 * square).astype(np.float32), SAMPLE_RATE)


def _lying_sizes() -> bytes:
    """RIFF and data sizes claiming ~4 GB (a day of 24 kHz 16-bit audio) in front of half a second."""
    raw = bytearray(_half_second())
    assert raw[36:40] == b"data"
    raw[4:8] = struct.pack("<I", 0xFFFFFFF0)
    raw[40:44] = struct.pack("<I", 0xFFFFFFF0)
    return bytes(raw)


def _unknown_codec() -> bytes:
    """Half a second whose WAV format tag (0x1234) names no codec: FFmpeg opens it without a decoder."""
    raw = bytearray(_half_second())
    raw[20:22] = struct.pack("<H", 0x1234)
    return bytes(raw)


def _float_wav_with(value: float) -> bytes:
    data = np.full(SAMPLE_RATE // 10, 0.1, np.float32)
    data[len(data) // 2] = value
    return _wav(data, SAMPLE_RATE, "FLOAT")


TONE_GAINS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.5)
"""440 Hz amplitude per channel of the 8-channel clip: its downmix has their mean."""


def _eight_channels(seconds: float) -> bytes:
    """8 channels at 192 kHz: a 440 Hz tone at TONE_GAINS, and in the last channel also a 30 kHz tone,
    above the 12 kHz Nyquist limit of 24 kHz audio, that correct resampling removes."""
    rate = 192_000
    t = np.arange(int(seconds * rate)) / rate
    tone = np.sin(2 * np.pi * 440 * t)
    channels = [gain * tone for gain in TONE_GAINS]
    channels[-1] = channels[-1] + 0.3 * np.sin(2 * np.pi * 30_000 * t)
    return _wav(np.stack(channels, axis=1).astype(np.float32), rate)


def _mp3_garbage() -> bytes:
    """An ID3v2 tag and an MPEG-1 layer III frame header, then random bytes."""
    id3 = b"ID3\x04\x00\x00" + bytes(4)  # version 2.4, no flags, empty tag
    return id3 + b"\xff\xfb\x90\x64" + np.random.default_rng(3).bytes(8000)


def _ten_minutes_of_silence(fmt: str, subtype: str) -> bytes:
    """8 kHz silence written a second at a time (libsndfile's Vorbis encoder crashes on one huge write)."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", 8000, 1, format=fmt, subtype=subtype) as f:
        for _ in range(600):
            f.write(np.zeros(8000, np.float32))
    raw = buf.getvalue()
    assert len(raw) < MAX_AUDIO_BYTES  # the byte cap cannot catch it: only the duration can
    return raw


NOT_AUDIO = "the data is not audio in a supported format"
LASTS_10_MINUTES = f"the audio lasts 600.0 s, over the {MAX_AUDIO_SECONDS:g} s limit"

# id → (bytes factory, status, what the detail must say); None: accepted.
AUDIO_CORPUS: dict[str, tuple[Callable[[], bytes], int | None, str]] = {
    "wav-truncated-header": (lambda: _half_second()[:30], 400, NOT_AUDIO),
    "wav-header-without-data": (lambda: _half_second()[:44], 400, "no samples"),
    "wav-sizes-claim-gigabytes": (_lying_sizes, None, ""),
    "float-wav-nan": (lambda: _float_wav_with(np.nan), 400, "NaN or infinite samples"),
    "float-wav-inf": (lambda: _float_wav_with(-np.inf), 400, "NaN or infinite samples"),
    "wav-one-sample": (lambda: _wav(np.array([0.5], np.float32), SAMPLE_RATE), None, ""),
    "wav-one-sample-192k": (lambda: _wav(np.array([0.5], np.float32), 192_000), 400, "too short"),
    "wav-8ch-192k-1s": (lambda: _eight_channels(1.0), None, ""),
    "wav-8ch-192k-over-byte-cap": (
        lambda: _eight_channels(3.5),
        413,
        f"larger than the {MAX_AUDIO_BYTES}-byte limit",
    ),
    "wav-9ch": (
        lambda: _wav(np.zeros((2400, MAX_CHANNELS + 1), np.float32), SAMPLE_RATE),
        400,
        f"at most {MAX_CHANNELS} are supported",
    ),
    "wav-384k": (
        lambda: _wav(np.zeros(3840, np.float32), 2 * MAX_SAMPLE_RATE),
        400,
        f"at most {MAX_SAMPLE_RATE} Hz is supported",
    ),
    "mp3-header-then-garbage": (_mp3_garbage, 400, NOT_AUDIO),
    "wav-unknown-codec": (_unknown_codec, 400, NOT_AUDIO),
    "silence-10min-flac": (lambda: _ten_minutes_of_silence("FLAC", "PCM_16"), 413, LASTS_10_MINUTES),
    "silence-10min-ogg": (lambda: _ten_minutes_of_silence("OGG", "VORBIS"), 413, LASTS_10_MINUTES),
    "silence-10min-mp3": (lambda: _ten_minutes_of_silence("MP3", "MPEG_LAYER_III"), 413, LASTS_10_MINUTES),
    "silence-10min-wav-8bit": (lambda: _ten_minutes_of_silence("WAV", "PCM_U8"), 413, LASTS_10_MINUTES),
    "png": (lambda: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64), 400, NOT_AUDIO),
    "zip": (
        lambda: b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + np.random.default_rng(4).bytes(2000),
        400,
        NOT_AUDIO,
    ),
    "random-bytes": (lambda: np.random.default_rng(5).bytes(4000), 400, NOT_AUDIO),
}


# Usable audio that is still no voice reference: refused where it would become a voice.
REFERENCE_PATHS = ("/clone_voice", "/v1/voices")
REFERENCE_REFUSALS = {"wav-one-sample": (400, "too short for a voice reference: 0.00 s of audio")}


@functools.cache
def corpus_b64(case: str) -> str:
    return base64.b64encode(AUDIO_CORPUS[case][0]()).decode()


# Where audio goes in each endpoint's body, and the field name its errors must carry.
AUDIO_FIELDS: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "/speak": (
        "context[0].audio_b64",
        lambda a: {"text": "Hello", "context": [{"text": "c", "speaker": 0, "audio_b64": a}]},
    ),
    "/clone_voice": ("reference_audio_b64", lambda a: {**GOOD["/clone_voice"], "reference_audio_b64": a}),
    "/v1/voices": ("audio_b64", lambda a: {**GOOD["/v1/voices"], "audio_b64": a}),
}


def received_audio(engine: FakeEngine, path: str) -> np.ndarray:
    """The PCM the API handed to the engine for the user's audio."""
    if path == "/v1/voices":
        return engine.encoded[-1]
    audio = engine.requests[-1].context[0].audio
    assert audio is not None
    return audio


def check_decoded(case: str, pcm: np.ndarray) -> None:
    """What an accepted corpus entry must decode to: its real content, at 24 kHz mono float32."""
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    if case == "wav-sizes-claim-gigabytes":
        assert len(pcm) == SAMPLE_RATE // 2  # the half second there is, not the claimed day
        assert np.allclose(np.abs(pcm), 0.25, atol=1e-3)
    elif case == "wav-one-sample":
        assert len(pcm) == 1 and abs(pcm[0] - 0.5) < 1e-3
    elif case == "wav-8ch-192k-1s":
        assert len(pcm) == SAMPLE_RATE
        middle = pcm[2400:-2400]  # clear of the resampler's edges
        # downmixed as the mean of the channels, not one channel or their sum
        assert np.abs(middle).max() == pytest.approx(np.mean(TONE_GAINS), abs=0.01)
        spectrum = np.abs(np.fft.rfft(middle)) / len(middle)
        freqs = np.fft.rfftfreq(len(middle), 1 / SAMPLE_RATE)
        assert abs(freqs[np.argmax(spectrum)] - 440) < 2
        # the 30 kHz tone (0.3 / 8 after the downmix) would alias to 6 kHz without a low-pass
        alias = spectrum[np.abs(freqs - 6000) < 50].max()
        assert alias < 1e-3 * spectrum.max(), alias
    else:
        raise AssertionError(f"no expectation for accepted case {case}")


@pytest.mark.parametrize("path", list(AUDIO_FIELDS))
@pytest.mark.parametrize("case", list(AUDIO_CORPUS))
def test_hostile_audio_is_refused_clearly_or_decoded_correctly(
    client: TestClient, engine: FakeEngine, case: str, path: str
) -> None:
    _, status, message = AUDIO_CORPUS[case]
    if path in REFERENCE_PATHS and case in REFERENCE_REFUSALS:
        status, message = REFERENCE_REFUSALS[case]
    field, body = AUDIO_FIELDS[path]
    r = client.post(path, json=body(corpus_b64(case)))
    assert r.status_code < 500, r.text
    if status is None:
        assert r.status_code == ACCEPTED[path], r.text
        check_decoded(case, received_audio(engine, path))
    else:
        assert r.status_code == status, r.text
        detail = detail_of(r)
        assert detail.startswith((f"{field}: ", f"{field} ")), detail
        assert message in detail
    assert_still_serves(client, path)


# ---------------------------------------------------------------------------------------------------
# Hostile JSON
# ---------------------------------------------------------------------------------------------------
CONTEXT_TURN = {"text": "c", "speaker": 0, "audio_b64": wav_b64(0.05)}

# (path, body: a dict sent as JSON or raw bytes, status, what the detail must name)
JSON_CASES = [
    pytest.param("/speak", {"text": "\x00\x00\x07"}, 422, "body.text: Value error, must not be blank", id="text-control-only"),
    pytest.param("/speak", {"text": ""}, 422, "body.text", id="text-empty"),
    pytest.param(
        "/speak", {"text": " \n\t "}, 422, "body.text: Value error, must not be blank", id="text-blank"
    ),
    pytest.param(
        "/speak",
        {"text": "x" * 1_000_000},
        413,
        f"text has 1000000 characters, over the {MAX_LONG_TEXT_CHARS}-character limit",
        id="text-huge",
    ),
    pytest.param(
        "/clone_voice",
        {**GOOD["/clone_voice"], "reference_text": "y" * (MAX_TEXT_CHARS + 1)},
        413,
        f"reference_text has {MAX_TEXT_CHARS + 1} characters",
        id="clone-reference-text-huge",
    ),
    pytest.param("/speak", {"text": 42}, 422, "body.text: Input should be a valid string", id="text-number"),
    pytest.param(
        "/speak", {"text": ["a", "b"]}, 422, "body.text: Input should be a valid string", id="text-list"
    ),
    pytest.param("/speak", {"text": None}, 422, "body.text", id="text-null"),
    pytest.param("/speak", {"speaker": 1}, 422, "body.text: Field required", id="text-missing"),
    pytest.param("/speak", {"text": "Hi", "speaker": "loud"}, 422, "body.speaker", id="speaker-string"),
    pytest.param("/speak", {"text": "Hi", "speaker": 2}, 422, "body.speaker", id="speaker-2"),
    pytest.param("/speak", {"text": "Hi", "speaker": 0.5}, 422, "body.speaker", id="speaker-fraction"),
    pytest.param(
        "/speak", {"text": "Hi", "max_duration_ms": -1}, 422, "body.max_duration_ms", id="duration-negative"
    ),
    pytest.param(
        "/speak", {"text": "Hi", "max_duration_ms": 10**15}, 422, "body.max_duration_ms", id="duration-huge"
    ),
    pytest.param("/speak", {"text": "Hi", "seed": -1}, 422, "body.seed", id="seed-negative"),
    pytest.param("/speak", {"text": "Hi", "seed": 2**64}, 422, "body.seed", id="seed-over-uint32"),
    pytest.param("/speak", {"text": "Hi", "temperature": 0}, 422, "body.temperature", id="temperature-zero"),
    pytest.param("/speak", {"text": "Hi", "top_k": 10**9}, 422, "body.top_k", id="top-k-huge"),
    pytest.param(
        "/speak",
        {"text": "Hi", "context": [CONTEXT_TURN] * 500},
        413,
        f"context has 500 turns, over the {MAX_CONTEXT_TURNS}-turn limit",
        id="context-500-turns",
    ),
    pytest.param("/speak", {"text": "Hi", "context": "turns"}, 422, "body.context", id="context-not-a-list"),
    pytest.param(
        "/speak",
        {"text": "Hi", "context": [{**CONTEXT_TURN, "audio_b64": 12345}]},
        422,
        "body.context.0.audio_b64",
        id="context-audio-number",
    ),
    pytest.param(
        "/speak",
        {"text": "Hi", "context": [{**CONTEXT_TURN, "speaker": 2}]},
        422,
        "body.context.0.speaker",
        id="context-speaker-2",
    ),
    pytest.param(
        "/v1/voices", {**GOOD["/v1/voices"], "name": "n" * 101}, 422, "body.name", id="voice-name-long"
    ),
    pytest.param("/speak", b"[1, 2, 3]", 422, "body: Input should be a valid dictionary", id="body-array"),
    pytest.param("/speak", b"null", 422, "body: Input should be a valid dictionary", id="body-null"),
    pytest.param("/speak", b"", 422, "body: Field required", id="body-empty"),
    pytest.param("/speak", b'{"text": "Hi",', 422, "JSON decode error", id="body-truncated-json"),
    pytest.param(
        "/speak", b"[" * 100_000 + b"]" * 100_000, 400, "error parsing the body", id="body-nested-100k"
    ),
    pytest.param("/speak", b'{"text": "\xff\xfe"}', 400, "error parsing the body", id="body-invalid-utf8"),
    pytest.param(
        "/speak",
        b'{"text": "Hi", "temperature": NaN}',
        422,
        "body.temperature",
        id="temperature-nan",
    ),
    pytest.param(
        "/speak",
        b'{"text": "Hi", "max_duration_ms": 1e400}',
        422,
        "body.max_duration_ms",
        id="duration-infinity",
    ),
    pytest.param(
        "/speak", b'{"text": "\\ud800"}', 422, "body.text", id="text-lone-surrogate"
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "named"), JSON_CASES)
def test_hostile_json_is_a_clear_4xx(
    client: TestClient, path: str, body: dict[str, Any] | bytes, status: int, named: str
) -> None:
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert named in detail_of(r)
    assert_still_serves(client, path)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/clone_voice", {**GOOD["/clone_voice"], "text": "\U0001f600"}, "text"),
        ("/contextual_speak", {"text": "\U0001f600\U0001f600"}, "text"),
        ("/batch_speak", {"texts": ["One.", "\U0001f600 \U0001f44d"]}, "texts[1]"),
    ],
)
def test_text_that_normalizes_to_nothing_is_a_422(
    client: TestClient, engine: FakeEngine, path: str, body: dict[str, Any], field: str
) -> None:
    """Emoji are left out by normalization: nothing is left for the engine, which
    refuses an empty text (a 500 before)."""
    r = client.post(path, json=body)
    assert r.status_code == 422 and detail_of(r) == f"{field} has nothing to speak", r.text
    assert engine.requests == []


# ---------------------------------------------------------------------------------------------------
# A 60 MB body
# ---------------------------------------------------------------------------------------------------
SIXTY_MB = 60 * 1024 * 1024
BODY_LIMIT = f"request body is larger than the {MAX_BODY_BYTES}-byte limit"


def _sixty_mb_body() -> bytes:
    head = b'{"text": "Hi", "context": [{"text": "c", "speaker": 0, "audio_b64": "'
    tail = b'"}]}'
    return head + b"A" * (SIXTY_MB - len(head) - len(tail)) + tail


def test_sixty_megabyte_body_is_413_in_process(client: TestClient) -> None:
    r = client.post("/speak", content=_sixty_mb_body(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"] == BODY_LIMIT
    assert_still_serves(client, "/speak")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_sixty_megabyte_body_is_413_over_http(tmp_path: Path, framing: str) -> None:
    """Through uvicorn: a declared length is refused up front, a chunked body once it passes the cap."""
    from serve_app.api.app import create_app
    from serve_app.api.settings import ApiSettings

    app = create_app(FakeEngine(), ApiSettings(voices_dir=tmp_path / "voices", **LIMITS))
    body = _sixty_mb_body()
    content: bytes | Any = (
        body
        if framing == "content-length"
        else (body[i : i + (1 << 20)] for i in range(0, len(body), 1 << 20))
    )
    with serve_over_http(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        r = http.post("/speak", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["detail"] == BODY_LIMIT
        ok = http.post("/speak", json=GOOD["/speak"])
        assert ok.status_code == 200 and ok.content[:4] == b"RIFF"


def test_a_declared_oversized_body_on_v1_gets_openais_error_object(client: TestClient) -> None:
    """Refused before it is read, the 413 still has the shape every other /v1/ error has."""
    headers = {"content-type": "application/json", "content-length": str(MAX_BODY_BYTES + 1)}
    r = client.post("/v1/audio/speech", content=b"{}", headers=headers)
    assert r.status_code == 413 and r.json()["detail"] == BODY_LIMIT
    assert r.json()["error"]["message"] == BODY_LIMIT
