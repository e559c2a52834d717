"""Reading encoded responses back with the two readers users have: libsndfile (soundfile) and FFmpeg
(PyAV). Raw formats (pcm, ulaw, alaw) carry no header, so the readers are told what they hold, as a
user would tell them."""

from __future__ import annotations

import io
from typing import NamedTuple

import av
import numpy as np
import soundfile as sf

from serve_app.audio.formats import OutputFormat

# codec → (soundfile subtype, FFmpeg demuxer) for the headerless formats
RAW_FORMATS = {"pcm": ("PCM_16", "s16le"), "ulaw": ("ULAW", "mulaw"), "alaw": ("ALAW", "alaw")}

SOUNDFILE_UNREADABLE = {"aac"}
"""libsndfile has no AAC decoder."""

# Extra samples a decoder may return for a streamed (or ADTS) file: the codec's priming and padding,
# which only a complete file's header lets the decoder trim. One MP3 frame is 1152 samples, AAC
# primes 1024 and pads to a 1024-sample frame.
CODEC_PADDING = {"mp3": 2 * 1152, "aac": 2 * 1024}
OPUS_PRE_SKIP_S = 312 / 48_000
"""Opus's priming, which FFmpeg and libsndfile leave in a file of one Ogg page (under 100 ms)."""


def longest_silence_s(output: OutputFormat) -> float:
    """What an utterance with no audio may decode to: nothing for raw formats and WAV, else the one
    silent sample a compressed file gets plus the codec's padding (see serve_app/audio/encode.py)."""
    if output.codec in (*RAW_FORMATS, "wav"):
        return 0.0
    if output.codec == "opus":
        return 1 / output.sample_rate + OPUS_PRE_SKIP_S
    return (1 + CODEC_PADDING.get(output.codec, 0)) / output.sample_rate


class Decoded(NamedTuple):
    samples: np.ndarray  # mono float32
    sample_rate: int


def read_soundfile(data: bytes, output: OutputFormat) -> Decoded:
    if output.codec in RAW_FORMATS:
        subtype = RAW_FORMATS[output.codec][0]
        pcm, rate = sf.read(
            io.BytesIO(data), format="RAW", subtype=subtype, samplerate=output.sample_rate, channels=1,
            endian="LITTLE", dtype="float32",
        )
    else:
        pcm, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        assert pcm.shape[1] == 1, "mono"
        pcm = pcm[:, 0]
    return Decoded(pcm, rate)


def read_pyav(data: bytes, output: OutputFormat) -> Decoded:
    options = {}
    fmt = None
    if output.codec in RAW_FORMATS:
        fmt = RAW_FORMATS[output.codec][1]
        options = {"sample_rate": str(output.sample_rate), "ch_layout": "mono"}
    with av.open(io.BytesIO(data), format=fmt, options=options) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.channels == 1, "mono"
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        rate = stream.codec_context.sample_rate
    if not frames:
        return Decoded(np.zeros(0, np.float32), rate)
    pcm = np.concatenate(frames).astype(np.float32)
    if np.issubdtype(frames[0].dtype, np.integer):
        pcm /= float(np.iinfo(frames[0].dtype).max)
    return Decoded(pcm, rate)


def expected_decoded_rate(output: OutputFormat, reader: str) -> int:
    """FFmpeg decodes Opus at 48 kHz whatever the encoding rate; libsndfile at the encoding rate."""
    return 48_000 if output.codec == "opus" and reader == "pyav" else output.sample_rate
