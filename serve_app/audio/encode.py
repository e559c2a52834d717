"""Mono float32 PCM → the response formats users ask for, whole or as a stream of bytes.

wav/flac whole files go through libsndfile (soundfile); mp3/opus/aac (and streamed flac) go
through FFmpeg's encoders via PyAV, muxed into a write-only sink so the bytes of each chunk can
leave as soon as they are encoded. Streamed WAV uses the "unknown length" header convention
(RIFF and data sizes 0xFFFFFFFF) that players and soundfile accept.
"""

from __future__ import annotations

import io
import struct
from typing import Literal, Protocol, get_args

import av
import numpy as np
import soundfile as sf

from serve_app.constants import SAMPLE_RATE

__all__ = [
    "AUDIO_FORMATS",
    "CONTENT_TYPES",
    "AudioFormat",
    "StreamEncoder",
    "encode_audio",
    "open_stream_encoder",
    "to_pcm16",
    "wav_stream_header",
]

AudioFormat = Literal["wav", "pcm", "flac", "mp3", "opus", "aac"]
AUDIO_FORMATS: tuple[str, ...] = get_args(AudioFormat)

# The content types OpenAI's speech endpoint answers with.
CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
}

# format → (FFmpeg muxer, encoder, muxer options); Opus lives in Ogg, AAC in ADTS frames.
_FFMPEG: dict[str, tuple[str, str, dict[str, str]]] = {
    "mp3": ("mp3", "libmp3lame", {}),
    "opus": ("ogg", "libopus", {"page_duration": "100000"}),  # flush Ogg pages every 100 ms
    "aac": ("adts", "aac", {}),
    "flac": ("flac", "flac", {}),
}
_AVIO_BUFFER = 4096  # small so muxed bytes reach the sink promptly


def to_pcm16(pcm: np.ndarray) -> bytes:
    """float32 in [-1, 1] → 16-bit little-endian bytes (clipped, not wrapped)."""
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_stream_header(sample_rate: int = SAMPLE_RATE, channels: int = 1) -> bytes:
    """A 44-byte PCM16 WAV header whose sizes say "unknown" (0xFFFFFFFF), for streaming."""
    unknown = 0xFFFFFFFF
    block = channels * 2
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block, block, 16)
        + b"data"
        + struct.pack("<I", unknown)
    )


def encode_audio(pcm: np.ndarray, fmt: AudioFormat, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Encode a whole utterance into one file of `fmt`."""
    if fmt == "pcm":
        return to_pcm16(pcm)
    if fmt in ("wav", "flac"):
        buf = io.BytesIO()
        # the same integer samples as the streamed formats, so a stream and a file agree bit for bit
        samples = np.frombuffer(to_pcm16(pcm), dtype="<i2")
        sf.write(buf, samples, sample_rate, format=fmt.upper(), subtype="PCM_16")
        return buf.getvalue()
    encoder = open_stream_encoder(fmt, sample_rate)
    return encoder.write(pcm) + encoder.close()


class StreamEncoder(Protocol):
    """Feeds PCM chunks in, hands encoded bytes out as soon as they exist."""

    def write(self, pcm: np.ndarray) -> bytes: ...

    def close(self) -> bytes: ...


class _RawEncoder:
    """pcm (and wav, after its header): samples as 16-bit LE, nothing buffered."""

    def __init__(self, header: bytes = b"") -> None:
        self._pending = header

    def write(self, pcm: np.ndarray) -> bytes:
        out, self._pending = self._pending + to_pcm16(pcm), b""
        return out

    def close(self) -> bytes:
        out, self._pending = self._pending, b""
        return out


class _Sink:
    """A write-only file for PyAV's muxer (no seek: the muxer streams instead of rewriting headers)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def drain(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class _FFmpegEncoder:
    """mp3/opus/aac/flac through PyAV; PyAV re-chunks input into the codec's frame size."""

    def __init__(self, fmt: str, sample_rate: int) -> None:
        muxer, codec, options = _FFMPEG[fmt]
        self._rate = sample_rate
        self._sink = _Sink()
        self._container = av.open(
            self._sink, mode="w", format=muxer, options=options, buffer_size=_AVIO_BUFFER
        )
        self._stream = self._container.add_stream(codec, rate=sample_rate, layout="mono")
        self._closed = False

    def write(self, pcm: np.ndarray) -> bytes:
        if len(pcm):
            samples = np.clip(pcm, -1.0, 1.0).astype(np.float32, copy=False)[None, :]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout="mono")
            frame.sample_rate = self._rate
            self._container.mux(self._stream.encode(frame))
        return self._sink.drain()

    def close(self) -> bytes:
        if not self._closed:
            self._closed = True
            self._container.mux(self._stream.encode(None))
            self._container.close()
        return self._sink.drain()


def open_stream_encoder(fmt: AudioFormat, sample_rate: int = SAMPLE_RATE) -> StreamEncoder:
    """A streaming encoder for `fmt`; call `close()` once at the end for the trailing bytes."""
    if fmt == "pcm":
        return _RawEncoder()
    if fmt == "wav":
        return _RawEncoder(wav_stream_header(sample_rate))
    if fmt in _FFMPEG:
        return _FFmpegEncoder(fmt, sample_rate)
    raise ValueError(f"unsupported audio format {fmt!r}; expected one of {', '.join(AUDIO_FORMATS)}")
