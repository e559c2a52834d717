"""Every format at every sample rate, whole and streamed, read back by libsndfile and FFmpeg."""

import io

import numpy as np
import pytest
import soundfile as sf

from serve_app.audio.encode import (
    encode_audio,
    open_stream_encoder,
    to_pcm16,
    wav_header,
    wav_stream_header,
)
from serve_app.audio.formats import AUDIO_FORMATS, OPUS_RATES, SAMPLE_RATES, OutputFormat
from serve_app.audio.resample import resample
from serve_app.engine.types import SAMPLE_RATE
from tests.support_formats import (
    CODEC_PADDING,
    SOUNDFILE_UNREADABLE,
    expected_decoded_rate,
    longest_silence_s,
    read_pyav,
    read_soundfile,
)

SECONDS = 1.0
FREQ = 330.0
TONE = (0.4 * np.sin(2 * np.pi * FREQ * np.arange(int(SAMPLE_RATE * SECONDS)) / SAMPLE_RATE)).astype(
    np.float32
)
ALL_OUTPUTS = [
    OutputFormat(codec, rate)  # type: ignore[arg-type]
    for codec in AUDIO_FORMATS
    for rate in SAMPLE_RATES
    if codec != "opus" or rate in OPUS_RATES
]
LOSSLESS = ("wav", "pcm", "flac")
NO_AUDIO = np.zeros(0, np.float32)


def _streamed(output: OutputFormat, chunk: int = 1920) -> bytes:
    encoder = open_stream_encoder(output)
    data = b"".join(encoder.write(TONE[i : i + chunk]) for i in range(0, len(TONE), chunk))
    return data + encoder.close()


def _dominant_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * rate / len(pcm))


def _check(decoded, output: OutputFormat, reader: str, padding: int = 0) -> None:
    rate = expected_decoded_rate(output, reader)
    assert decoded.sample_rate == rate
    expected = round(SECONDS * rate)
    assert expected <= len(decoded.samples) <= expected + padding * rate // output.sample_rate
    assert _dominant_hz(decoded.samples, rate) == pytest.approx(FREQ, abs=3)  # the tone, at its pitch
    if output.codec in LOSSLESS:
        reference = resample(TONE, SAMPLE_RATE, output.sample_rate)
        np.testing.assert_allclose(decoded.samples, reference, atol=2 / 32767)
    elif output.codec in ("ulaw", "alaw"):  # 8-bit companding: about 3 % of the level near 0.4
        reference = resample(TONE, SAMPLE_RATE, output.sample_rate)
        np.testing.assert_allclose(decoded.samples, reference, atol=0.02)


@pytest.mark.parametrize("output", ALL_OUTPUTS, ids=lambda o: o.name)
def test_whole_file_reads_with_both_readers_at_its_rate_and_duration(output: OutputFormat) -> None:
    data = encode_audio(TONE, output)
    # A complete file lets decoders trim the codec's priming exactly, except ADTS AAC, which has no
    # field for it.
    padding = CODEC_PADDING["aac"] if output.codec == "aac" else 0
    _check(read_pyav(data, output), output, "pyav", padding)
    if output.codec in SOUNDFILE_UNREADABLE:
        with pytest.raises(sf.LibsndfileError):
            read_soundfile(data, output)
    else:
        _check(read_soundfile(data, output), output, "soundfile", padding)


@pytest.mark.parametrize("output", ALL_OUTPUTS, ids=lambda o: o.name)
def test_streamed_bytes_read_as_documented(output: OutputFormat) -> None:
    """FFmpeg reads every stream; libsndfile every stream but FLAC's (whose header cannot hold the
    length) and AAC. MP3 and AAC streams keep the encoder's padding."""
    data = _streamed(output)
    padding = CODEC_PADDING.get(output.codec, 0)
    _check(read_pyav(data, output), output, "pyav", padding)
    if output.streams_as_file and output.codec not in SOUNDFILE_UNREADABLE:
        _check(read_soundfile(data, output), output, "soundfile", padding)
    else:
        with pytest.raises((sf.LibsndfileError, ValueError)):
            read_soundfile(data, output)


@pytest.mark.parametrize("name", ["pcm_16000", "wav_44100", "ulaw_8000", "flac_22050"])
def test_stream_in_ragged_chunks_equals_the_whole_encoding(name: str) -> None:
    """Resampling state crosses chunk joins: the stream's samples are the whole file's, bit for bit."""
    output = OutputFormat.parse(name)
    rng = np.random.default_rng(0)
    encoder = open_stream_encoder(output)
    pieces, at = [], 0
    while at < len(TONE):
        size = int(rng.integers(1, 3000))
        pieces.append(encoder.write(TONE[at : at + size]))
        at += size
    streamed = b"".join(pieces) + encoder.close()
    whole = encode_audio(TONE, output)
    if output.codec == "wav":
        assert streamed[:44] == wav_stream_header(output.sample_rate)
        streamed, whole = streamed[44:], whole[44:]
    if output.codec == "flac":
        streamed, whole = read_pyav(streamed, output).samples, read_pyav(whole, output).samples
        np.testing.assert_array_equal(streamed, whole)
    else:
        assert streamed == whole


def _encoded_nothing(output: OutputFormat, streamed: bool) -> bytes:
    """An utterance that ended before its first sample, as a whole file or as a stream."""
    if not streamed:
        return encode_audio(NO_AUDIO, output)
    encoder = open_stream_encoder(output)
    return encoder.write(NO_AUDIO) + encoder.close()


def _check_silence(data: bytes, output: OutputFormat, streamed: bool) -> None:
    """Both readers (where they read the format) open it and find at most the documented silence."""
    readers = [("pyav", read_pyav)]
    if output.codec not in SOUNDFILE_UNREADABLE and (output.streams_as_file or not streamed):
        readers.append(("soundfile", read_soundfile))
    for name, read in readers:
        decoded = read(data, output)
        assert decoded.sample_rate == expected_decoded_rate(output, name), name
        assert len(decoded.samples) / decoded.sample_rate <= longest_silence_s(output) + 1e-9, name
        assert np.abs(decoded.samples).max(initial=0) <= 1e-6, name


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("output", [o for o in ALL_OUTPUTS if o.codec in ("flac", "mp3", "opus", "aac")],
                         ids=lambda o: o.name)
def test_no_audio_is_still_a_compressed_file_that_decodes(output: OutputFormat, streamed: bool) -> None:
    """0 bytes (or a bare header) before: decoders refused it. Now one silent sample, and its padding."""
    data = _encoded_nothing(output, streamed)
    _check_silence(data, output, streamed)
    assert read_pyav(data, output).samples.size > 0


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("name", ["wav", "pcm", "ulaw_8000", "alaw_8000"])
def test_no_audio_is_a_bare_wav_header_or_no_raw_bytes(name: str, streamed: bool) -> None:
    output = OutputFormat.parse(name)
    data = _encoded_nothing(output, streamed)
    if output.codec == "wav":
        assert data == (wav_stream_header() if streamed else wav_header(SAMPLE_RATE, 0))
    else:
        assert data == b""
    _check_silence(data, output, streamed)


def test_pcm_is_16_bit_little_endian_and_clipped() -> None:
    data = encode_audio(np.array([0.0, 0.5, -1.0, 2.0], np.float32), "pcm")
    assert np.frombuffer(data, "<i2").tolist() == [0, 16384, -32767, 32767]


def test_wav_headers_say_unknown_when_streamed_and_the_size_when_whole() -> None:
    header = wav_stream_header()
    assert len(header) == 44 and header[4:8] == b"\xff\xff\xff\xff" and header[40:44] == b"\xff\xff\xff\xff"
    streamed = _streamed(OutputFormat("wav"))
    assert streamed[:44] == header and streamed[44:] == to_pcm16(TONE)
    whole = encode_audio(TONE, "wav")
    assert whole == wav_header(SAMPLE_RATE, 2 * len(TONE)) + to_pcm16(TONE)
    with sf.SoundFile(io.BytesIO(whole)) as f:
        assert (f.frames, f.samplerate, f.subtype) == (len(TONE), SAMPLE_RATE, "PCM_16")


@pytest.mark.parametrize("name", ["mp3", "opus", "aac", "ulaw_8000", "flac"])
def test_ffmpeg_stream_emits_bytes_before_close(name: str) -> None:
    encoder = open_stream_encoder(name)
    early = b"".join(encoder.write(TONE[i : i + 1920]) for i in range(0, len(TONE), 1920))
    assert len(early) > 1000  # bytes leave while the stream is still open
    assert encoder.close()  # and the tail at the end
    assert encoder.close() == b""  # closing twice is harmless


def test_closed_encoder_refuses_more_audio() -> None:
    encoder = open_stream_encoder("mp3")
    encoder.close()
    with pytest.raises(ValueError, match="closed"):
        encoder.write(TONE)


@pytest.mark.parametrize("codec", ["mp3", "opus", "aac"])
def test_bitrate_sets_the_size(codec: str) -> None:
    rate = 48_000
    small = encode_audio(TONE, OutputFormat(codec, rate, 32))
    large = encode_audio(TONE, OutputFormat(codec, rate, 128))
    assert len(large) / len(small) > 2.5  # about 4x the bits (headers and VBR slack aside)
    assert len(small) * 8 / SECONDS / 1000 == pytest.approx(32, rel=0.35)


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown audio format 'ogg'"):
        open_stream_encoder("ogg")
