"""Decoding users' base64 audio: formats, downmix, resampling, and every way it can be wrong."""

import base64
import io
import time
import tracemalloc

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from serve_app.audio import decode
from serve_app.audio.decode import (
    MAX_CHANNELS,
    MAX_SAMPLE_RATE,
    AudioInputError,
    AudioLimits,
    AudioTooLargeError,
    decode_base64,
    load_audio_b64,
)
from serve_app.engine.types import SAMPLE_RATE

LIMITS = AudioLimits(max_bytes=2_000_000, max_seconds=5.0)


def _tone(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    if channels == 1:
        return left.astype(np.float32)
    return np.stack([left, np.zeros_like(left)], axis=1).astype(np.float32)


def _file(data: np.ndarray, rate: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt)
    return buf.getvalue()


def _m4a(data: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(data[None, :].copy(), format="fltp", layout="mono")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_formats_decode_to_24k_mono_with_the_right_duration(fmt: str) -> None:
    pcm = load_audio_b64(_b64(_file(_tone(44_100, 1.0, channels=2), 44_100, fmt)), LIMITS)
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    # lossy codecs add encoder delay/padding: allow 100 ms
    assert abs(len(pcm) / SAMPLE_RATE - 1.0) < 0.1


def test_stereo_is_averaged_and_resampled_preserving_the_signal() -> None:
    stereo = _tone(16_000, 1.0, channels=2)  # right channel silent
    pcm = load_audio_b64(_b64(_file(stereo, 16_000, "WAV")), LIMITS)
    assert len(pcm) == SAMPLE_RATE
    # mean of (0.5 sine, 0) → 0.25 peak; HQ resampling keeps the amplitude
    assert 0.24 < np.abs(pcm[1000:-1000]).max() < 0.26
    spectrum = np.abs(np.fft.rfft(pcm))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(pcm) - 440) < 2


def test_aac_in_mp4_falls_back_to_ffmpeg() -> None:
    pcm = load_audio_b64(_b64(_m4a(_tone(48_000, 1.0), 48_000)), LIMITS)
    assert abs(len(pcm) / SAMPLE_RATE - 1.0) < 0.1
    assert np.abs(pcm).max() > 0.3


def test_data_uri_and_line_breaks_are_accepted() -> None:
    text = _b64(_file(_tone(SAMPLE_RATE, 0.5), SAMPLE_RATE, "WAV"))
    wrapped = "data:audio/wav;base64," + "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert len(load_audio_b64(wrapped, LIMITS)) == SAMPLE_RATE // 2


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not base64 at all!", "not valid base64"),
        ("abc", "not valid base64"),  # bad padding
        ("", "is empty"),
        (_b64(b"hello, these bytes are plain text and not audio" * 20), "not audio in a supported format"),
        (_b64(_file(np.zeros(0, np.float32), SAMPLE_RATE, "WAV")), "no samples"),
    ],
)
def test_unusable_input_is_a_clear_input_error(payload: str, message: str) -> None:
    with pytest.raises(AudioInputError, match=message) as info:
        load_audio_b64(payload, LIMITS, field="context[0].audio_b64")
    assert not isinstance(info.value, AudioTooLargeError)
    assert "context[0].audio_b64" in str(info.value)


def test_truncated_file_is_an_input_error() -> None:
    raw = _file(_tone(SAMPLE_RATE, 1.0), SAMPLE_RATE, "FLAC")
    with pytest.raises(AudioInputError):
        load_audio_b64(_b64(raw[:200]), LIMITS)


def test_byte_cap_is_checked_before_decoding_base64() -> None:
    huge = "A" * 4_000_000  # ~3 MB decoded, over the 2 MB cap
    with pytest.raises(AudioTooLargeError, match="byte limit"):
        decode_base64(huge, LIMITS.max_bytes)


@pytest.mark.parametrize("fmt", ["WAV", "M4A"])
def test_duration_cap_is_enforced(fmt: str) -> None:
    tone = _tone(8_000, 6.0)  # 6 s, over the 5 s cap, small in bytes
    raw = _m4a(tone, 8_000) if fmt == "M4A" else _file(tone, 8_000, "WAV")
    with pytest.raises(AudioTooLargeError, match="over the 5 s limit"):
        load_audio_b64(_b64(raw), LIMITS)


def test_non_finite_float_samples_are_rejected() -> None:
    data = _tone(SAMPLE_RATE, 0.1)
    data[10] = np.nan
    buf = io.BytesIO()
    sf.write(buf, data, SAMPLE_RATE, format="WAV", subtype="FLOAT")
    with pytest.raises(AudioInputError, match="NaN"):
        load_audio_b64(_b64(buf.getvalue()), LIMITS)


def _silence_file(fmt: str, subtype: str, rate: int, seconds: int, channels: int = 1) -> bytes:
    """Written a second at a time: libsndfile's Vorbis encoder crashes on one very large write."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, channels, format=fmt, subtype=subtype) as f:
        for _ in range(seconds):
            f.write(np.zeros((rate, channels), np.float32))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "subtype"), [("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]
)
def test_long_compressed_silence_is_refused_from_the_header(monkeypatch, fmt: str, subtype: str) -> None:
    """Ten minutes of silence is a few KB of FLAC/OGG: the byte cap cannot catch it, the header must."""
    raw = _silence_file(fmt, subtype, 8_000, 600)
    assert len(raw) < LIMITS.max_bytes
    frames_read: list[int] = []
    real_read = sf.SoundFile.read

    def counting_read(self: sf.SoundFile, *args: object, **kwargs: object) -> np.ndarray:
        data = real_read(self, *args, **kwargs)
        frames_read.append(len(data))
        return data

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    with pytest.raises(AudioTooLargeError, match="lasts 600.0 s, over the 5 s limit"):
        load_audio_b64(_b64(raw), LIMITS)
    assert sum(frames_read) == 0


def test_many_channels_at_a_high_rate_decode_in_bounded_memory() -> None:
    """8 channels of 192 kHz FLAC silence compress to almost nothing; decoding them whole took
    rate x channels x 4 bytes per second (6 MB/s, 370 MB for a minute) before the downmix."""
    raw = _silence_file("FLAC", "PCM_16", 192_000, 5, channels=8)
    assert len(raw) < 20_000
    tracemalloc.start()
    try:
        pcm = load_audio_b64(_b64(raw), LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(pcm) == 5 * SAMPLE_RATE and not pcm.any()
    whole_input = 5 * 192_000 * 8 * 4
    assert peak < whole_input / 4, f"peak {peak / 1e6:.1f} MB for a {whole_input / 1e6:.0f} MB input"


def test_block_wise_resampling_matches_one_shot_resampling() -> None:
    """Blocks are resampled as they are decoded: the result must have no seams at block edges."""
    rng = np.random.default_rng(1)
    noise = (0.2 * rng.standard_normal(3 * 44_100)).astype(np.float32)  # spans several blocks
    pcm = load_audio_b64(_b64(_file(noise, 44_100, "FLAC")), LIMITS)
    stored, _ = sf.read(io.BytesIO(_file(noise, 44_100, "FLAC")), dtype="float32")  # 16-bit rounded
    reference = soxr.resample(stored, 44_100, SAMPLE_RATE, quality="HQ")
    assert len(pcm) == len(reference) == 3 * SAMPLE_RATE
    np.testing.assert_allclose(pcm, reference, atol=1e-5)


@pytest.mark.parametrize(
    ("rate", "channels", "message"),
    [
        (MAX_SAMPLE_RATE * 2, 1, f"at most {MAX_SAMPLE_RATE} Hz is supported"),
        (SAMPLE_RATE, MAX_CHANNELS + 1, f"at most {MAX_CHANNELS} are supported"),
    ],
    ids=["rate-over-max", "channels-over-max"],
)
def test_unsupported_rates_and_channel_counts_are_input_errors(
    rate: int, channels: int, message: str
) -> None:
    raw = _file(np.zeros((rate // 10, channels), np.float32), rate, "WAV")
    with pytest.raises(AudioInputError, match=message) as info:
        load_audio_b64(_b64(raw), LIMITS)
    assert not isinstance(info.value, AudioTooLargeError)


def test_a_sample_too_short_to_survive_resampling_is_an_input_error() -> None:
    """One sample at 192 kHz resamples to nothing at 24 kHz; that must not pass as usable audio."""
    raw = _file(np.array([0.5], np.float32), 192_000, "WAV")
    with pytest.raises(AudioInputError, match="too short"):
        load_audio_b64(_b64(raw), LIMITS)
    one = load_audio_b64(_b64(_file(np.array([0.5], np.float32), SAMPLE_RATE, "WAV")), LIMITS)
    assert len(one) == 1 and abs(one[0] - 0.5) < 1e-3


def test_non_finite_samples_past_the_first_block_are_rejected() -> None:
    data = _tone(SAMPLE_RATE, 4.0)  # several decode blocks
    data[-5] = np.inf
    buf = io.BytesIO()
    sf.write(buf, data, SAMPLE_RATE, format="WAV", subtype="FLOAT")
    with pytest.raises(AudioInputError, match="NaN or infinite"):
        load_audio_b64(_b64(buf.getvalue()), LIMITS)


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_a_tag_that_is_not_utf8_does_not_refuse_the_audio(fmt: str) -> None:
    """M4A/WebM from other tools may carry Latin-1 tags (a title "Café"): the audio is still audio."""
    buf = io.BytesIO()
    codec, rate, size = ("aac", 48_000, 1024) if fmt == "mp4" else ("libopus", 48_000, 960)
    data = _tone(rate, 1.0)
    with av.open(buf, "w", format=fmt) as container:
        container.metadata["title"] = "TITLE-PLACEHOLDER"
        stream = container.add_stream(codec, rate=rate, layout="mono")
        for start in range(0, len(data), size):
            block = data[None, start : start + size].copy()
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    raw = buf.getvalue()
    assert raw.count(b"TITLE-PLACEHOLDER") == 1
    raw = raw.replace(b"TITLE-PLACEHOLDER", "Café au lait 1234".encode("latin-1").ljust(17))
    pcm = load_audio_b64(_b64(raw), LIMITS)
    assert abs(len(pcm) / SAMPLE_RATE - 1.0) < 0.1
    assert np.abs(pcm).max() > 0.3


def _matroska_pcm(rate: int, seconds: float, samples_per_frame: int) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        pcm = (_tone(rate, seconds) * 32767).astype(np.int16)
        for start in range(0, len(pcm), samples_per_frame):
            frame = av.AudioFrame.from_ndarray(
                pcm[None, start : start + samples_per_frame].copy(), format="s16", layout="mono"
            )
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def test_audio_cut_into_tiny_frames_is_refused_before_it_costs_minutes_of_cpu() -> None:
    """One-sample frames cost ~20 µs of Python each: 10 MB of them would be ~20 s of CPU (and GIL)."""
    tiny = _matroska_pcm(8000, 1.0, samples_per_frame=1)  # 8000 frames for 1 s, under the 5 s cap
    with pytest.raises(AudioInputError, match="more than 5000 frames") as info:
        load_audio_b64(_b64(tiny), LIMITS)
    assert not isinstance(info.value, AudioTooLargeError)
    usual = load_audio_b64(_b64(_matroska_pcm(48_000, 4.0, samples_per_frame=120)), LIMITS)  # 2.5 ms frames
    assert abs(len(usual) / SAMPLE_RATE - 4.0) < 0.01


def _webm(data: np.ndarray, seekable: bool) -> bytes:
    """Opus in WebM as a browser's MediaRecorder makes it (not seekable: no duration anywhere)."""

    class Sink:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, chunk: bytes) -> int:
            self.data += chunk
            return len(chunk)

    out = io.BytesIO() if seekable else Sink()
    with av.open(out, "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48_000, layout="mono")
        for start in range(0, len(data), 960):
            block = data[None, start : start + 960].copy()
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
            frame.sample_rate = 48_000
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return bytes(out.getvalue() if seekable else out.data)


def test_webm_over_the_duration_cap_says_how_long_it_is_or_that_it_is_longer() -> None:
    tone = _tone(48_000, 8.0)  # 8 s, over the 5 s cap
    with pytest.raises(AudioTooLargeError, match=r"lasts 8\.0 s, over the 5 s limit"):
        load_audio_b64(_b64(_webm(tone, seekable=True)), LIMITS)  # the Segment's duration
    with pytest.raises(AudioTooLargeError, match="lasts more than 5 s, over the 5 s limit"):
        load_audio_b64(_b64(_webm(tone, seekable=False)), LIMITS)  # found while decoding


def test_a_sample_rate_change_mid_stream_is_refused_not_played_at_the_wrong_speed() -> None:
    """Two ADTS AAC files joined (44.1 then 16 kHz): the second part must not pass as 44.1 kHz."""

    def adts(rate: int) -> bytes:
        buf = io.BytesIO()
        with av.open(buf, "w", format="adts") as container:
            stream = container.add_stream("aac", rate=rate, layout="mono")
            data = _tone(rate, 1.0)
            for start in range(0, len(data), 1024):
                block = data[None, start : start + 1024].copy()
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
                frame.sample_rate = rate
                frame.pts = start
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        return buf.getvalue()

    with pytest.raises(AudioInputError, match="changes sample rate mid-stream"):
        load_audio_b64(_b64(adts(44_100) + adts(16_000)), LIMITS)
    assert abs(len(load_audio_b64(_b64(adts(16_000)), LIMITS)) / SAMPLE_RATE - 1.0) < 0.2


def _ffmpeg_file(fmt: str, codec: str, rate: int = 48_000) -> bytes:
    """A second of tone as FFmpeg muxes `codec` in `fmt`."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(_tone(rate, 1.0)[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def _libsndfile_refuses(raw: bytes, max_seconds: float, target_rate: int) -> np.ndarray:
    raise sf.LibsndfileError(0, "refused here: ")


@pytest.mark.parametrize(
    ("fmt", "codec"),
    [
        ("adts", "aac"),
        ("mp4", "aac"),
        ("webm", "libopus"),
        ("ogg", "libopus"),
        ("mpegts", "aac"),
        ("mpegts", "mp2"),
        ("mp3", "libmp3lame"),
        ("flac", "flac"),
        ("wav", "pcm_s16le"),
        ("caf", "pcm_s16le"),
    ],
)
def test_ffmpeg_decodes_the_audio_containers_it_is_allowed(monkeypatch, fmt: str, codec: str) -> None:
    """Each through FFmpeg, even those libsndfile reads first."""
    monkeypatch.setattr(decode, "_decode_soundfile", _libsndfile_refuses)
    pcm = load_audio_b64(_b64(_ffmpeg_file(fmt, codec)), LIMITS)
    assert abs(len(pcm) / SAMPLE_RATE - 1.0) < 0.1
    assert np.abs(pcm).max() > 0.3


@pytest.mark.parametrize("fmt", ["nut", "avi"])
def test_audio_in_a_container_outside_the_allowed_demuxers_is_refused(fmt: str) -> None:
    raw = _ffmpeg_file(fmt, "pcm_s16le")
    with av.open(io.BytesIO(raw)) as container:  # FFmpeg itself reads the audio
        assert container.format.name == fmt and container.streams.audio
    with pytest.raises(AudioInputError, match="not audio in a supported format"):
        load_audio_b64(_b64(raw), LIMITS)


def test_an_sdp_description_is_refused_at_once_not_listened_on() -> None:
    """FFmpeg would open the UDP port it names and wait ~20 s for RTP, holding a worker thread."""
    sdp = b"v=0\nc=IN IP4 127.0.0.1\nm=audio 21000 RTP/AVP 0\n"
    start = time.monotonic()
    with pytest.raises(AudioInputError, match="not audio in a supported format") as info:
        load_audio_b64(_b64(sdp), LIMITS)
    assert time.monotonic() - start < 2.0
    assert not isinstance(info.value, AudioTooLargeError)


def test_a_concat_list_cannot_read_a_file_on_the_server(tmp_path, monkeypatch) -> None:
    """FFmpeg's concat demuxer would decode a file the list names (here a WAV in the working directory)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "private.wav").write_bytes(_file(_tone(SAMPLE_RATE, 0.5), SAMPLE_RATE, "WAV"))
    with pytest.raises(AudioInputError, match="not audio in a supported format"):
        load_audio_b64(_b64(b"ffconcat version 1.0\nfile private.wav\n"), LIMITS)
