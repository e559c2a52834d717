"""The output formats of streamed speech sessions, by name: what a client asks for on the WebSocket.

Names follow the `codec_samplerate` convention voice-agent clients know (`pcm_24000`, `ulaw_8000`):
16-bit PCM at 24, 16 or 8 kHz, μ-law at 8 kHz for telephony, and Ogg Opus at 24 kHz. This module is
the one place that maps a name to an encoder: PCM and Opus use `open_stream_encoder`; rates other than
the model's 24 kHz go through soxr's streaming resampler (its state carries across chunks, so there are
no clicks at chunk joins); μ-law is FFmpeg's G.711 encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
import soxr

from serve_app.audio.encode import StreamEncoder, open_stream_encoder, to_pcm16
from serve_app.engine.types import SAMPLE_RATE

__all__ = ["OUTPUT_FORMATS", "OutputFormat", "open_output_encoder"]


@dataclass(frozen=True)
class OutputFormat:
    name: str
    codec: str  # pcm (16-bit little-endian), ulaw, opus (Ogg pages)
    sample_rate: int
    content_type: str


OUTPUT_FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat("pcm_24000", "pcm", 24_000, "audio/pcm;rate=24000"),
        OutputFormat("pcm_16000", "pcm", 16_000, "audio/pcm;rate=16000"),
        OutputFormat("pcm_8000", "pcm", 8_000, "audio/pcm;rate=8000"),
        OutputFormat("ulaw_8000", "ulaw", 8_000, "audio/basic"),
        OutputFormat("opus_24000", "opus", 24_000, "audio/ogg;codecs=opus"),
    )
}


class _Resampled:
    """Another encoder fed at `rate` Hz from the model's 24 kHz, one chunk at a time."""

    def __init__(self, inner: StreamEncoder, rate: int) -> None:
        self._inner = inner
        self._resampler = soxr.ResampleStream(SAMPLE_RATE, rate, 1, dtype="float32")

    def write(self, pcm: np.ndarray) -> bytes:
        return self._inner.write(self._resampler.resample_chunk(np.asarray(pcm, np.float32)))

    def close(self) -> bytes:
        tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        return self._inner.write(tail) + self._inner.close()


class _MuLaw:
    """G.711 μ-law bytes (one per sample) through FFmpeg's encoder."""

    def __init__(self, rate: int) -> None:
        self._codec = av.CodecContext.create("pcm_mulaw", "w")
        self._codec.sample_rate = rate
        self._codec.format = "s16"
        self._codec.layout = "mono"
        self._codec.open()
        self._rate = rate

    def write(self, pcm: np.ndarray) -> bytes:
        if not len(pcm):
            return b""
        samples = np.frombuffer(to_pcm16(pcm), "<i2")[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self._rate
        return b"".join(bytes(packet) for packet in self._codec.encode(frame))

    def close(self) -> bytes:
        return b"".join(bytes(packet) for packet in self._codec.encode(None))


def open_output_encoder(name: str) -> StreamEncoder:
    """A streaming encoder for the format `name` (see `OUTPUT_FORMATS`)."""
    fmt = OUTPUT_FORMATS.get(name)
    if fmt is None:
        raise ValueError(f"unknown output format {name!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
    inner: StreamEncoder
    if fmt.codec == "opus":
        inner = open_stream_encoder("opus", fmt.sample_rate)
    elif fmt.codec == "ulaw":
        inner = _MuLaw(fmt.sample_rate)
    else:
        inner = open_stream_encoder("pcm", fmt.sample_rate)
    return inner if fmt.sample_rate == SAMPLE_RATE else _Resampled(inner, fmt.sample_rate)
