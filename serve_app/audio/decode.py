"""Base64 audio from users → mono float32 PCM at 24 kHz, in memory, with hard size caps.

Everything is decoded from bytes in memory (no temp files). Sizes are checked before work is
done: the base64 length bounds the byte size before decoding it, the container header bounds the
duration, sample rate and channel count before decoding samples, and decoding stops at the cap in
case a header lies. Samples are downmixed and resampled block by block as they are decoded, so
memory follows the 24 kHz mono result, not the input's rate x channels (a few hundred KB of
compressed 8-channel silence would otherwise expand to gigabytes of float32).
WAV/FLAC/OGG/MP3 go through libsndfile (soundfile); anything else libsndfile rejects (AAC/M4A, WebM,
...) is tried with FFmpeg through PyAV, limited to audio demuxers and to the bytes given: no protocol
(file, network) may be opened, as SDP, HLS or concat playlists would otherwise have FFmpeg do.
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

from serve_app.constants import SAMPLE_RATE

__all__ = [
    "MAX_CHANNELS",
    "MAX_SAMPLE_RATE",
    "AudioInputError",
    "AudioLimits",
    "AudioTooLargeError",
    "decode_audio",
    "decode_base64",
    "load_audio_b64",
    "load_audio_bytes",
]

_DATA_URI_RE = re.compile(r"^data:[\w/+.-]*(?:;[\w=.-]+)*;base64,", re.IGNORECASE)
_WHITESPACE_RE = re.compile(r"\s+")

MAX_SAMPLE_RATE = 192_000
"""Highest input rate accepted: decoding work grows with rate x channels x seconds, and no voice
recording needs more."""
MAX_CHANNELS = 8
"""Most input channels accepted (7.1 surround)."""
_BLOCK_FRAMES = 1 << 16
MAX_PACKETS_PER_SECOND = 1000
"""Most decoded frames per second of the duration cap (FFmpeg path). Codecs frame 2.5 ms or more;
frames of a sample or two cost Python work each, so a few MB of them would cost a minute of CPU."""
FFMPEG_DEMUXERS = frozenset(
    {
        "wav",
        "w64",  # Sony Wave64
        "aiff",
        "caf",  # Apple Core Audio
        "au",
        "flac",
        "ogg",  # Vorbis, Opus
        "mp3",
        "aac",  # ADTS
        "ac3",
        "eac3",
        "amr",
        "wv",  # WavPack
        "asf",  # WMA
        "mov,mp4,m4a,3gp,3g2,mj2",
        "matroska,webm",
        "mpegts",
    }
)
"""The FFmpeg demuxers (`format.name`) uploads may use: audio files and the containers audio comes in.
Others are refused before their header is read: some open what the data names (SDP and RTP a UDP port,
HLS and concat other files or URLs), and no voice recording needs the rest (images, video formats)."""
_FFMPEG_OPTIONS = {
    "format_whitelist": ",".join(sorted(FFMPEG_DEMUXERS)),
    "protocol_whitelist": "none",  # nothing outside the given bytes, whatever a demuxer asks for
}


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
        return _decode_soundfile(raw, max_seconds, target_rate)
    except sf.LibsndfileError:
        return _decode_pyav(raw, max_seconds, target_rate)


def load_audio_b64(data: str, limits: AudioLimits, field: str = "audio_b64") -> np.ndarray:
    """Base64 text → mono float32 PCM at 24 kHz; error messages name `field`."""
    return load_audio_bytes(decode_base64(data, limits.max_bytes, field), limits, field)


def load_audio_bytes(raw: bytes, limits: AudioLimits, field: str = "audio") -> np.ndarray:
    """An audio file's bytes (an upload) → mono float32 PCM at 24 kHz; error messages name `field`."""
    if not raw:
        raise AudioInputError(f"{field} is empty")
    if len(raw) > limits.max_bytes:
        raise AudioTooLargeError(f"{field} is larger than the {limits.max_bytes}-byte limit")
    try:
        return decode_audio(raw, limits.max_seconds)
    except AudioTooLargeError as exc:
        raise AudioTooLargeError(f"{field}: {exc}") from None
    except AudioInputError as exc:
        raise AudioInputError(f"{field}: {exc}") from None


def _too_long(seconds: float | None, max_seconds: float) -> AudioTooLargeError:
    """`seconds`: the length its header gives; None where decoding ran past the limit (no length given)."""
    lasts = f"more than {max_seconds:g} s" if seconds is None else f"{seconds:.1f} s"
    return AudioTooLargeError(f"the audio lasts {lasts}, over the {max_seconds:g} s limit")


class _MonoOutput:
    """Collects decoded mono blocks at the target rate, resampling each as it arrives.

    Refuses audio past the duration cap, NaN/Inf samples and unsupported rates or channel counts as
    soon as a header or block shows them, before more is decoded."""

    def __init__(self, rate: int, channels: int, max_seconds: float, target_rate: int) -> None:
        if rate <= 0:
            raise AudioInputError("the audio header has no valid sample rate")
        if rate > MAX_SAMPLE_RATE:
            raise AudioInputError(
                f"the audio's sample rate is {rate} Hz; at most {MAX_SAMPLE_RATE} Hz is supported"
            )
        if not 1 <= channels <= MAX_CHANNELS:
            raise AudioInputError(f"the audio has {channels} channels; at most {MAX_CHANNELS} are supported")
        self.rate = rate
        self.channels = channels
        self.target_rate = target_rate
        self.max_seconds = max_seconds
        self.cap = int(max_seconds * rate)  # input frames
        self.frames = 0
        self._resampler = (
            None
            if rate == target_rate
            else soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ")
        )
        self._pieces: list[np.ndarray] = []

    def add(self, mono: np.ndarray) -> None:
        self.frames += len(mono)
        if self.frames > self.cap:
            raise _too_long(None, self.max_seconds)
        if not np.isfinite(mono).all():
            raise AudioInputError("the audio contains NaN or infinite samples")
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        self._pieces.append(mono if self._resampler is None else self._resampler.resample_chunk(mono))

    def finish(self) -> np.ndarray:
        if self.frames == 0:
            raise AudioInputError("the audio contains no samples")
        if self._resampler is not None:
            self._pieces.append(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        pcm = np.concatenate(self._pieces)
        if pcm.size == 0:
            raise AudioInputError(
                f"the audio is too short: {self.frames} samples at {self.rate} Hz"
                f" make no sample at {self.target_rate} Hz"
            )
        return np.ascontiguousarray(pcm, dtype=np.float32)


def _decode_soundfile(raw: bytes, max_seconds: float, target_rate: int) -> np.ndarray:
    with sf.SoundFile(io.BytesIO(raw)) as f:
        if f.samplerate > 0 and f.frames > int(max_seconds * f.samplerate):
            raise _too_long(f.frames / f.samplerate, max_seconds)
        out = _MonoOutput(f.samplerate, f.channels, max_seconds, target_rate)
        try:
            while True:  # reads stop at the header's frame count (already under the cap)
                block = f.read(frames=_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if not len(block):
                    break
                out.add(block.mean(axis=1))
        except sf.LibsndfileError as exc:
            raise AudioInputError(f"the audio data is corrupt ({exc})") from None
        return out.finish()


def _decode_pyav(raw: bytes, max_seconds: float, target_rate: int) -> np.ndarray:
    unsupported = AudioInputError(
        "the data is not audio in a supported format (WAV, FLAC, OGG, MP3, AAC/M4A)"
    )
    try:
        # Tags are not ours to judge: a Latin-1 title (older taggers) must not refuse the audio.
        container = av.open(
            io.BytesIO(raw), mode="r", container_options=_FFMPEG_OPTIONS, metadata_errors="replace"
        )
    except (av.FFmpegError, ValueError, OSError):
        raise unsupported from None
    with container:
        # The whitelist option already refused other demuxers; this holds should FFmpeg ignore it.
        if container.format.name not in FFMPEG_DEMUXERS or not container.streams.audio:
            raise unsupported
        stream = container.streams.audio[0]
        if stream.codec_context is None:  # a codec FFmpeg has no decoder for (a WAV's unknown format tag)
            raise unsupported
        rate = stream.sample_rate or stream.codec_context.sample_rate
        seconds = None
        if stream.duration is not None and stream.time_base is not None and rate:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:  # WebM and Matroska give only the whole file's
            seconds = container.duration / av.time_base
        if seconds is not None and seconds > max_seconds:
            raise _too_long(seconds, max_seconds)
        out = _MonoOutput(rate or 0, stream.codec_context.channels, max_seconds, target_rate)
        resampler = av.AudioResampler(format="fltp")  # planar float, same layout and rate
        max_frames = int(max_seconds * MAX_PACKETS_PER_SECOND)
        try:
            for count, frame in enumerate(container.decode(stream), 1):
                if count > max_frames:
                    raise AudioInputError(
                        f"the audio is cut into more than {max_frames} frames (at most "
                        f"{MAX_PACKETS_PER_SECOND} a second of the {max_seconds:g} s limit): re-encode it"
                    )
                # The resampler keeps its first rate: a later frame at another would change speed.
                if frame.sample_rate != out.rate:
                    if out.frames:
                        raise AudioInputError(
                            f"the audio changes sample rate mid-stream ({out.rate} to {frame.sample_rate} Hz)"
                        )
                    out = _MonoOutput(frame.sample_rate, out.channels, max_seconds, target_rate)
                for planar in resampler.resample(frame):
                    out.add(planar.to_ndarray().mean(axis=0))
        except av.FFmpegError as exc:
            raise AudioInputError(f"the audio data is corrupt ({exc})") from None
    return out.finish()
