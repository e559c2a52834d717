"""Base64 audio from users → mono float32 PCM at 24 kHz, in memory, with hard size caps.

Everything is decoded from bytes in memory (no temp files). Sizes are checked before work is
done: the base64 length bounds the byte size before decoding it, the container header bounds the
duration before decoding samples, and decoding stops at the cap in case a header lies.
WAV/FLAC/OGG/MP3 go through libsndfile (soundfile); anything else libsndfile rejects (AAC/M4A, WebM,
...) is tried with FFmpeg through PyAV.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass

import av
import numpy as np
import soundfile as sf
import soxr

from serve_app.engine.types import SAMPLE_RATE

__all__ = [
    "AudioInputError",
    "AudioLimits",
    "AudioTooLargeError",
    "decode_audio",
    "decode_base64",
    "load_audio_b64",
]

_DATA_URI_RE = re.compile(r"^data:[\w/+.-]*(?:;[\w=.-]+)*;base64,", re.IGNORECASE)
_WHITESPACE_RE = re.compile(r"\s+")


class AudioInputError(ValueError):
    """The user's audio is unusable (bad base64, not audio, empty): an HTTP 400."""


class AudioTooLargeError(AudioInputError):
    """The user's audio is over a size or duration cap: an HTTP 413."""


@dataclass(frozen=True)
class AudioLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_seconds: float = 60.0


def decode_base64(data: str, max_bytes: int, field: str = "audio_b64") -> bytes:
    """Strict base64 (a data: URI prefix and line breaks allowed), size-checked before decoding."""
    text = _WHITESPACE_RE.sub("", _DATA_URI_RE.sub("", data.strip(), count=1))
    if not text:
        raise AudioInputError(f"{field} is empty")
    if len(text) // 4 * 3 > max_bytes + 2:
        raise AudioTooLargeError(f"{field} is larger than the {max_bytes}-byte limit")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AudioInputError(f"{field} is not valid base64 ({exc})") from None
    if len(raw) > max_bytes:
        raise AudioTooLargeError(f"{field} is larger than the {max_bytes}-byte limit")
    return raw


def decode_audio(raw: bytes, max_seconds: float, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Audio file bytes → mono float32 at `target_rate`; raises AudioInputError / AudioTooLargeError."""
    try:
        pcm, rate = _decode_soundfile(raw, max_seconds)
    except sf.LibsndfileError:
        pcm, rate = _decode_pyav(raw, max_seconds)
    if pcm.size == 0:
        raise AudioInputError("the audio contains no samples")
    if not np.isfinite(pcm).all():
        raise AudioInputError("the audio contains NaN or infinite samples")
    if rate != target_rate:
        pcm = soxr.resample(pcm, rate, target_rate, quality="HQ")
    return np.ascontiguousarray(pcm, dtype=np.float32)


def load_audio_b64(data: str, limits: AudioLimits, field: str = "audio_b64") -> np.ndarray:
    """Base64 text → mono float32 PCM at 24 kHz; error messages name `field`."""
    raw = decode_base64(data, limits.max_bytes, field)
    try:
        return decode_audio(raw, limits.max_seconds)
    except AudioTooLargeError as exc:
        raise AudioTooLargeError(f"{field}: {exc}") from None
    except AudioInputError as exc:
        raise AudioInputError(f"{field}: {exc}") from None


def _too_long(seconds: float, max_seconds: float) -> AudioTooLargeError:
    return AudioTooLargeError(f"the audio lasts {seconds:.1f} s, over the {max_seconds:g} s limit")


def _decode_soundfile(raw: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    with sf.SoundFile(io.BytesIO(raw)) as f:
        if f.samplerate <= 0:
            raise AudioInputError("the audio header has no valid sample rate")
        cap = int(max_seconds * f.samplerate)
        if f.frames > cap:
            raise _too_long(f.frames / f.samplerate, max_seconds)
        try:
            data = f.read(frames=cap + 1, dtype="float32", always_2d=True)
        except sf.LibsndfileError as exc:
            raise AudioInputError(f"the audio data is corrupt ({exc})") from None
        if len(data) > cap:
            raise _too_long(len(data) / f.samplerate, max_seconds)
        return data.mean(axis=1), f.samplerate


def _decode_pyav(raw: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    unsupported = AudioInputError(
        "the data is not audio in a supported format (WAV, FLAC, OGG, MP3, AAC/M4A)"
    )
    try:
        container = av.open(io.BytesIO(raw), mode="r")
    except (av.FFmpegError, ValueError, OSError):
        raise unsupported from None
    with container:
        if not container.streams.audio:
            raise unsupported
        stream = container.streams.audio[0]
        rate = stream.sample_rate or stream.codec_context.sample_rate
        if not rate:
            raise AudioInputError("the audio stream has no valid sample rate")
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
            if seconds > max_seconds:
                raise _too_long(seconds, max_seconds)
        cap = int(max_seconds * rate)
        resampler = av.AudioResampler(format="fltp")  # planar float, same layout and rate
        pieces: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    mono = out.to_ndarray().mean(axis=0)
                    pieces.append(mono)
                    total += len(mono)
                if total > cap:
                    raise _too_long(total / rate, max_seconds)
        except av.FFmpegError as exc:
            raise AudioInputError(f"the audio data is corrupt ({exc})") from None
    pcm = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return pcm.astype(np.float32, copy=False), int(rate)
