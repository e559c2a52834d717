"""Output formats: the API's two spellings resolve to one codec, rate and bitrate, or a clear error."""

import pytest

from serve_app.audio.formats import OutputFormat


@pytest.mark.parametrize(
    ("name", "codec", "rate", "kbps", "content_type"),
    [
        ("mp3_44100_128", "mp3", 44100, 128, "audio/mpeg"),
        ("mp3_22050_32", "mp3", 22050, 32, "audio/mpeg"),
        ("pcm_16000", "pcm", 16000, None, "audio/pcm"),
        ("ulaw_8000", "ulaw", 8000, None, "audio/basic"),
        ("alaw_8000", "alaw", 8000, None, "audio/x-alaw-basic"),
        ("opus_48000_64", "opus", 48000, 64, "audio/opus"),
        ("wav_22050", "wav", 22050, None, "audio/wav"),
        ("flac", "flac", 24000, None, "audio/flac"),
        ("ulaw", "ulaw", 8000, None, "audio/basic"),  # telephony defaults to 8 kHz
        ("MP3_24000", "mp3", 24000, None, "audio/mpeg"),
    ],
)
def test_elevenlabs_names_parse(name, codec, rate, kbps, content_type) -> None:
    output = OutputFormat.parse(name)
    assert (output.codec, output.sample_rate, output.kbps) == (codec, rate, kbps)
    assert output.content_type == content_type
    assert OutputFormat.parse(output.name) == output  # the canonical name round-trips


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ogg_24000", "unknown audio format 'ogg'"),
        ("mp3_11025", "11025 Hz is not offered"),
        ("pcm_0", "0 Hz is not offered"),  # not the default rate
        ("mp3_0_128", "0 Hz is not offered"),
        ("ulaw_0", "0 Hz is not offered"),
        ("opus_0", "0 Hz is not offered"),
        ("opus_44100", "opus cannot encode at 44100 Hz"),
        ("pcm_16000_128", "pcm has no bitrate"),
        ("mp3_44100_1000", "outside 8..320"),
        ("opus_48000_320", "opus encodes mono at most at 256 kbit/s"),  # libopus refuses more
        ("mp3-44100", "is not codec_rate"),
        ("", "is not codec_rate"),
    ],
)
def test_bad_names_say_what_is_wrong(name, message) -> None:
    with pytest.raises(ValueError, match=message):
        OutputFormat.parse(name)


def test_lossy_formats_get_a_bitrate_that_suits_the_rate() -> None:
    assert OutputFormat("mp3", 8000).bitrate == 32_000
    assert OutputFormat("mp3", 24000).bitrate == 64_000
    assert OutputFormat("aac", 48000).bitrate == 128_000
    assert OutputFormat("mp3", 44100, 192).bitrate == 192_000
    assert OutputFormat("wav", 48000).bitrate is None


def test_resolve_combines_response_format_sample_rate_and_output_format() -> None:
    assert OutputFormat.resolve("wav") == OutputFormat("wav", 24000)
    assert OutputFormat.resolve("mp3", 16000) == OutputFormat("mp3", 16000)
    assert OutputFormat.resolve("alaw") == OutputFormat("alaw", 8000)
    # output_format wins over a defaulted response_format, agrees with an explicit one
    assert OutputFormat.resolve("wav", None, "ulaw_8000", response_format_given=False).codec == "ulaw"
    assert OutputFormat.resolve("pcm", 16000, "pcm_16000") == OutputFormat("pcm", 16000)
    with pytest.raises(ValueError, match="response_format 'wav' contradicts output_format"):
        OutputFormat.resolve("wav", None, "mp3_44100_128")
    with pytest.raises(ValueError, match="sample_rate 48000 contradicts"):
        OutputFormat.resolve("pcm", 48000, "pcm_16000", response_format_given=False)
    with pytest.raises(ValueError, match="0 Hz is not offered"):
        OutputFormat.resolve("ulaw", 0)


def test_only_flac_streams_into_an_incomplete_file() -> None:
    assert [c for c in ("wav", "pcm", "flac", "mp3", "opus", "aac", "ulaw", "alaw")
            if not OutputFormat.default(c).streams_as_file] == ["flac"]
