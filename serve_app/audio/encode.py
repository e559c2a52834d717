"""The engine's mono float32 PCM (24 kHz) → the audio a response carries, whole or as a stream.

One encoder object per response and `OutputFormat`: it resamples with soxr (state kept across
chunks, so joins do not click) to the format's rate, then encodes, handing out bytes as soon as they
exist. The same object serves chunked HTTP responses, SSE and any other streaming transport.

`encode_audio` runs that encoder over a whole utterance into a seekable buffer, so every container
gets its real header back at the end: WAV sizes, FLAC's sample count, MP3's LAME/Xing frame count and
encoder delay (decoders then trim the codec's padding and report the exact duration). Streamed, the
header is written before the length is known: WAV says "unknown size" (0xFFFFFFFF, which libsndfile
and FFmpeg accept), FLAC says "unknown sample count" (which FFmpeg accepts and libsndfile refuses).

pcm and wav are 16-bit little-endian samples written here; mp3 (LAME), opus (in Ogg), aac (ADTS
frames), flac and G.711 μ-law/A-law (raw bytes, as telephony APIs send them) go through FFmpeg's
encoders via PyAV, muxed into a write-only sink when streaming.

An utterance with no audio is still a file a decoder opens. WAV is a header alone and the raw formats
are 0 bytes, as they should be. FLAC, MP3, Opus and AAC cannot be empty: with no frames FFmpeg's
muxers give nothing decoders accept (no bytes at all, a bare ID3 tag, bare Ogg headers), and FLAC's
sample count of 0 means "unknown", which libsndfile refuses. They get one sample of silence, the
least a codec can be handed; decoders read it back with the padding nothing trims: none for FLAC,
under a frame for a whole MP3, under 3 frames for a streamed MP3 and for AAC, 6.5 ms for Opus.
"""

from __future__ import annotations

import io
import struct
from typing import Protocol

import av
import numpy as np

from serve_app.audio.formats import AUDIO_FORMATS, CONTENT_TYPES, AudioFormat, OutputFormat
from serve_app.audio.resample import StreamResampler
from serve_app.constants import SAMPLE_RATE

__all__ = [
    "AUDIO_FORMATS",
    "CONTENT_TYPES",
    "AudioFormat",
    "OutputFormat",
    "StreamEncoder",
    "as_output_format",
    "encode_audio",
    "open_stream_encoder",
    "to_pcm16",
    "wav_header",
    "wav_stream_header",
]

# format → (FFmpeg muxer, encoder, muxer options); Opus lives in Ogg, AAC in ADTS frames.
_FFMPEG: dict[str, tuple[str, str, dict[str, str]]] = {
    "mp3": ("mp3", "libmp3lame", {}),
    "opus": ("ogg", "libopus", {"page_duration": "100000"}),  # flush Ogg pages every 100 ms
    "aac": ("adts", "aac", {}),
    "flac": ("flac", "flac", {}),
    "ulaw": ("mulaw", "pcm_mulaw", {}),
    "alaw": ("alaw", "pcm_alaw", {}),
}
_NEVER_EMPTY = frozenset({"flac", "mp3", "opus", "aac"})
"""Formats whose file needs a sample to decode (see the module's docstring)."""
_SILENCE = np.zeros(1, np.float32)
_AVIO_BUFFER = 4096  # small so muxed bytes reach the sink promptly
_UNKNOWN_SIZE = 0xFFFFFFFF


def to_pcm16(pcm: np.ndarray) -> bytes:
    """float32 in [-1, 1] → 16-bit little-endian bytes (clipped, not wrapped)."""
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_header(sample_rate: int = SAMPLE_RATE, data_bytes: int | None = None, channels: int = 1) -> bytes:
    """A 44-byte PCM16 WAV header; without `data_bytes` its sizes say "unknown", for streaming."""
    block = channels * 2
    riff_size = _UNKNOWN_SIZE if data_bytes is None else 36 + data_bytes
    data_size = _UNKNOWN_SIZE if data_bytes is None else data_bytes
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block, block, 16)
        + b"data"
        + struct.pack("<I", data_size)
    )


def wav_stream_header(sample_rate: int = SAMPLE_RATE, channels: int = 1) -> bytes:
    """The header a streamed WAV starts with (sizes unknown)."""
    return wav_header(sample_rate, None, channels)


class StreamEncoder(Protocol):
    """PCM chunks at the engine's rate in, encoded bytes out as soon as they exist."""

    output: OutputFormat

    def write(self, pcm: np.ndarray) -> bytes: ...

    def close(self) -> bytes:
        """The trailing bytes; idempotent (later calls return nothing), frees the encoder."""
        ...


class _Encoder:
    """Resample to the format's rate, then `_encode`; subclasses add the codec."""

    def __init__(self, output: OutputFormat, input_rate: int) -> None:
        self.output = output
        self._resampler = StreamResampler(input_rate, output.sample_rate)
        self._closed = False

    def write(self, pcm: np.ndarray) -> bytes:
        if self._closed:
            raise ValueError("write to a closed audio encoder")
        return self._encode(self._resampler.process(pcm))

    def close(self) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        return self._encode(self._resampler.flush()) + self._finish()

    def _encode(self, pcm: np.ndarray) -> bytes:
        raise NotImplementedError

    def _finish(self) -> bytes:
        raise NotImplementedError


class _Pcm16Encoder(_Encoder):
    """pcm, and wav: a header, then the samples as 16-bit LE; whole WAVs get the real sizes."""

    def __init__(self, output: OutputFormat, input_rate: int, whole: bool) -> None:
        super().__init__(output, input_rate)
        self._buffer_wav = whole and output.codec == "wav"  # the header needs the size first
        streamed_header = output.codec == "wav" and not whole
        self._pending = wav_header(output.sample_rate) if streamed_header else b""
        self._data = bytearray()

    def _encode(self, pcm: np.ndarray) -> bytes:
        data = to_pcm16(pcm)
        if self._buffer_wav:
            self._data += data
            return b""
        out, self._pending = self._pending + data, b""
        return out

    def _finish(self) -> bytes:
        if self._buffer_wav:
            return wav_header(self.output.sample_rate, len(self._data)) + bytes(self._data)
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


class _FFmpegEncoder(_Encoder):
    """Everything FFmpeg encodes; PyAV re-chunks input into the codec's frame size.

    Streaming muxes into a `_Sink` and hands out what each chunk produced; a whole file muxes into a
    seekable buffer, so the muxer rewrites its header with the real length when it closes."""

    def __init__(self, output: OutputFormat, input_rate: int, whole: bool) -> None:
        super().__init__(output, input_rate)
        muxer, codec, options = _FFMPEG[output.codec]
        self._file: io.BytesIO | _Sink = io.BytesIO() if whole else _Sink()
        self._container = av.open(
            self._file, mode="w", format=muxer, options=options, buffer_size=_AVIO_BUFFER
        )
        self._stream = self._container.add_stream(codec, rate=output.sample_rate, layout="mono")
        if output.bitrate:
            self._stream.bit_rate = output.bitrate
        self._samples = 0  # handed to the codec, at the output rate

    def _encode(self, pcm: np.ndarray) -> bytes:
        self._feed(pcm)
        return self._file.drain() if isinstance(self._file, _Sink) else b""

    def _feed(self, pcm: np.ndarray) -> None:
        if not len(pcm):
            return
        self._samples += len(pcm)
        samples = np.ascontiguousarray(np.clip(pcm, -1.0, 1.0)[None, :], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = self.output.sample_rate
        self._container.mux(self._stream.encode(frame))

    def _finish(self) -> bytes:
        """Flush the codec and close the container; an empty `_NEVER_EMPTY` file gets one silent
        sample first, so it still decodes."""
        if not self._samples and self.output.codec in _NEVER_EMPTY:
            self._feed(_SILENCE)
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._file.drain() if isinstance(self._file, _Sink) else self._file.getvalue()


def as_output_format(output: OutputFormat | str) -> OutputFormat:
    """An `OutputFormat`, or a name: `wav`, `mp3`, ... at their default rates, or `mp3_44100_128`."""
    return output if isinstance(output, OutputFormat) else OutputFormat.parse(output)


def _open(output: OutputFormat | str, input_rate: int, whole: bool) -> _Encoder:
    output = as_output_format(output)
    if output.codec in ("pcm", "wav"):
        return _Pcm16Encoder(output, input_rate, whole)
    return _FFmpegEncoder(output, input_rate, whole)


def open_stream_encoder(output: OutputFormat | str, input_rate: int = SAMPLE_RATE) -> StreamEncoder:
    """A streaming encoder from `input_rate` PCM to `output`; call `close()` once at the end."""
    return _open(output, input_rate, whole=False)


def encode_audio(pcm: np.ndarray, output: OutputFormat | str, input_rate: int = SAMPLE_RATE) -> bytes:
    """A whole utterance as one complete file of `output` (headers carry the real length)."""
    encoder = _open(output, input_rate, whole=True)
    return encoder.write(pcm) + encoder.close()
