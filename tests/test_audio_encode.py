"""Every response format decodes with an independent decoder at 24 kHz mono with the right length."""

import io

import av
import numpy as np
import pytest
import soundfile as sf

from serve_app.audio.encode import (
    AUDIO_FORMATS,
    encode_audio,
    open_stream_encoder,
    to_pcm16,
    wav_stream_header,
)
from serve_app.engine.types import SAMPLE_RATE

SECONDS = 1.0
TONE = (0.4 * np.sin(2 * np.pi * 330 * np.arange(int(SAMPLE_RATE * SECONDS)) / SAMPLE_RATE)).astype(
    np.float32
)


def decode_with_pyav(data: bytes) -> tuple[np.ndarray, int, int]:
    """(samples, sample rate, channels) as FFmpeg sees the file."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray() for f in container.decode(stream)]
        rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
    pcm = np.concatenate(
        [f.reshape(channels, -1) if f.shape[0] == channels else f.reshape(-1, channels).T for f in frames],
        axis=1,
    )
    return pcm, rate, channels


@pytest.mark.parametrize("fmt", [f for f in AUDIO_FORMATS if f != "pcm"])
@pytest.mark.parametrize("streamed", [False, True])
def test_format_decodes_with_right_rate_and_duration(fmt: str, streamed: bool) -> None:
    if streamed:
        encoder = open_stream_encoder(fmt)
        data = (
            b"".join(encoder.write(TONE[i : i + 1920]) for i in range(0, len(TONE), 1920)) + encoder.close()
        )
    else:
        data = encode_audio(TONE, fmt)
    pcm, rate, channels = decode_with_pyav(data)
    assert channels == 1
    # Opus always decodes at 48 kHz (the codec's only internal rate); the others keep 24 kHz.
    assert rate == (48_000 if fmt == "opus" else SAMPLE_RATE)
    assert abs(pcm.shape[1] / rate - SECONDS) < 0.1
    assert np.abs(pcm.astype(np.float64)).max() > 0  # not silence


def test_pcm_is_16_bit_little_endian_and_clipped() -> None:
    data = encode_audio(np.array([0.0, 0.5, -1.0, 2.0], np.float32), "pcm")
    assert np.frombuffer(data, "<i2").tolist() == [0, 16384, -32767, 32767]


def test_streamed_wav_has_unknown_sizes_and_parses() -> None:
    header = wav_stream_header()
    assert len(header) == 44 and header[4:8] == b"\xff\xff\xff\xff" and header[40:44] == b"\xff\xff\xff\xff"
    encoder = open_stream_encoder("wav")
    data = encoder.write(TONE[:1000]) + encoder.write(TONE[1000:]) + encoder.close()
    assert data[:44] == header
    pcm, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == SAMPLE_RATE and len(pcm) == len(TONE)
    assert data[44:] == to_pcm16(TONE)


def test_whole_wav_matches_streamed_samples() -> None:
    whole, _ = sf.read(io.BytesIO(encode_audio(TONE, "wav")), dtype="int16")
    assert whole.tobytes() == to_pcm16(TONE)


def test_ffmpeg_stream_emits_bytes_before_close() -> None:
    encoder = open_stream_encoder("mp3")
    early = b"".join(encoder.write(TONE[i : i + 1920]) for i in range(0, len(TONE), 1920))
    assert len(early) > 1000  # bytes leave while the stream is still open
    encoder.close()


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported audio format"):
        open_stream_encoder("ogg")  # type: ignore[arg-type]
