"""What a response's audio is (codec, sample rate, bitrate), from either of the API's spellings.

`response_format` plus `sample_rate` (OpenAI's style) and ElevenLabs-style `output_format` names
(`mp3_44100_128`, `pcm_16000`, `ulaw_8000`, `opus_48000_64`) both resolve to one `OutputFormat`,
which the encoders take. Everything a format implies for HTTP (content type, file extension, whether
its streamed bytes are a complete file) lives here too, so routes never branch on codec names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from serve_app.constants import SAMPLE_RATE

__all__ = [
    "AUDIO_FORMATS",
    "CONTENT_TYPES",
    "SAMPLE_RATES",
    "AudioFormat",
    "OutputFormat",
    "SampleRate",
]

AudioFormat = Literal["wav", "pcm", "flac", "mp3", "opus", "aac", "ulaw", "alaw"]
AUDIO_FORMATS: tuple[str, ...] = get_args(AudioFormat)

SampleRate = Literal[8000, 16000, 22050, 24000, 44100, 48000]
SAMPLE_RATES: tuple[int, ...] = get_args(SampleRate)

# OpenAI's content types for its six formats; G.711 as RFC 2046 (μ-law) and its A-law sibling.
CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "ulaw": "audio/basic",
    "alaw": "audio/x-alaw-basic",
}

LOSSY: tuple[str, ...] = ("mp3", "opus", "aac")
"""The formats that take a bitrate."""
TELEPHONY: tuple[str, ...] = ("ulaw", "alaw")
"""G.711: 8-bit companded samples, 8 kHz unless asked otherwise."""
OPUS_RATES: tuple[int, ...] = (8000, 16000, 24000, 48000)
"""The rates of ours that libopus encodes at (Opus has no 22.05 or 44.1 kHz mode)."""
MIN_KBPS, MAX_KBPS = 8, 320
MAX_OPUS_KBPS = 256
"""libopus takes at most 256 kbit/s a channel, and the audio is mono: more fails to open the encoder."""

_NAME_RE = re.compile(r"^(?P<codec>[a-z0-9]+)(?:_(?P<rate>\d+))?(?:_(?P<kbps>\d+))?$")


def _default_kbps(sample_rate: int) -> int:
    """Speech at a bitrate that suits the rate (LAME's own default is thin below 32 kHz)."""
    return 32 if sample_rate <= 8000 else 64 if sample_rate <= 24000 else 128


@dataclass(frozen=True)
class OutputFormat:
    """A codec at a sample rate (and, for mp3/opus/aac, a bitrate in kbit/s); validated on creation."""

    codec: AudioFormat
    sample_rate: int = SAMPLE_RATE
    kbps: int | None = None

    def __post_init__(self) -> None:
        if self.codec not in AUDIO_FORMATS:
            raise ValueError(f"unknown audio format {self.codec!r}; expected one of {', '.join(AUDIO_FORMATS)}")
        if self.sample_rate not in SAMPLE_RATES:
            raise ValueError(
                f"sample rate {self.sample_rate} Hz is not offered; use one of "
                f"{', '.join(map(str, SAMPLE_RATES))}"
            )
        if self.codec == "opus" and self.sample_rate not in OPUS_RATES:
            raise ValueError(
                f"opus cannot encode at {self.sample_rate} Hz; use one of {', '.join(map(str, OPUS_RATES))}"
            )
        if self.kbps is not None:
            if self.codec not in LOSSY:
                raise ValueError(f"{self.codec} has no bitrate; only {', '.join(LOSSY)} take one")
            if not MIN_KBPS <= self.kbps <= MAX_KBPS:
                raise ValueError(f"bitrate {self.kbps} kbit/s is outside {MIN_KBPS}..{MAX_KBPS}")
            if self.codec == "opus" and self.kbps > MAX_OPUS_KBPS:
                raise ValueError(f"opus encodes mono at most at {MAX_OPUS_KBPS} kbit/s, not {self.kbps}")

    # -- the spellings ----------------------------------------------------------------------------
    @classmethod
    def default(cls, codec: str, sample_rate: int | None = None) -> OutputFormat:
        """`codec` at `sample_rate`, or at its default rate (24 kHz, 8 kHz for μ-law and A-law)."""
        if sample_rate is None:  # not `or`: a rate of 0 is refused as unoffered, not defaulted
            sample_rate = 8000 if codec in TELEPHONY else SAMPLE_RATE
        return cls(codec, sample_rate)  # type: ignore[arg-type]

    @classmethod
    def parse(cls, name: str) -> OutputFormat:
        """`codec[_rate[_kbps]]`, as ElevenLabs names its output formats (`mp3_44100_128`)."""
        match = _NAME_RE.match(name.strip().lower())
        if match is None:
            raise ValueError(
                f"output_format {name!r} is not codec_rate[_kbps], e.g. mp3_44100_128, pcm_16000, ulaw_8000"
            )
        rate = int(match["rate"]) if match["rate"] else None
        output = cls.default(match["codec"], rate)
        return output if match["kbps"] is None else cls(output.codec, output.sample_rate, int(match["kbps"]))

    @classmethod
    def resolve(
        cls,
        response_format: str,
        sample_rate: int | None = None,
        output_format: str | None = None,
        response_format_given: bool = True,
    ) -> OutputFormat:
        """One format from a request's fields; contradictions are errors, not silent choices.

        `output_format` wins over a defaulted `response_format`; an explicit one must name the
        same codec, and `sample_rate` must agree with the name's rate."""
        if output_format is None:
            return cls.default(response_format, sample_rate)
        output = cls.parse(output_format)
        if response_format_given and response_format != output.codec:
            raise ValueError(
                f"response_format {response_format!r} contradicts output_format {output_format!r}; give one"
            )
        if sample_rate is not None and sample_rate != output.sample_rate:
            raise ValueError(
                f"sample_rate {sample_rate} contradicts output_format {output_format!r}; give one"
            )
        return output

    # -- what it means for a response ---------------------------------------------------------------
    @property
    def name(self) -> str:
        """The canonical `codec_rate[_kbps]` name (also part of cache keys)."""
        return "_".join(str(p) for p in (self.codec, self.sample_rate, self.kbps) if p is not None)

    @property
    def bitrate(self) -> int | None:
        """Bits per second for the lossy encoders (a default when none was asked for)."""
        if self.codec not in LOSSY:
            return None
        return (self.kbps or _default_kbps(self.sample_rate)) * 1000

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.codec]

    @property
    def extension(self) -> str:
        return self.codec

    @property
    def streams_as_file(self) -> bool:
        """Whether the streamed bytes are also a complete file for libsndfile and FFmpeg.

        Streamed FLAC is not: its header is written before the sample count is known, and
        libsndfile refuses a FLAC stream whose header says "unknown length"."""
        return self.codec != "flac"
