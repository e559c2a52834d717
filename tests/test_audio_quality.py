"""Quality checks and tempo changes on signals with known properties."""

import numpy as np
import pytest

from serve_app.audio.quality import MIN_SECONDS, check_quality, shortest_plausible_seconds
from serve_app.audio.tempo import TempoStretcher, change_speed
from serve_app.engine.types import SAMPLE_RATE

RNG = np.random.default_rng(0)


def _tone(seconds: float, amplitude: float = 0.3, freq: float = 300.0) -> np.ndarray:
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_normal_speech_like_signal_passes() -> None:
    report = check_quality(_tone(1.0))
    assert report.ok, report.describe()


@pytest.mark.parametrize(
    ("pcm", "problem"),
    [
        (np.zeros(SAMPLE_RATE, np.float32), "silent"),
        (_tone(1.0, amplitude=1e-4), "silent"),
        (np.clip(_tone(1.0, amplitude=3.0), -1, 1), "clipped"),
        (_tone(0.2), "too short"),
    ],
)
def test_bad_audio_is_flagged(pcm: np.ndarray, problem: str) -> None:
    report = check_quality(pcm)
    assert report.problems == [problem]
    assert problem in report.describe()


def test_single_full_scale_peak_is_not_clipping() -> None:
    pcm = _tone(1.0)
    pcm[100] = 1.0
    assert check_quality(pcm).ok


def test_min_duration_is_configurable() -> None:
    assert check_quality(_tone(0.2), min_seconds=0.1).ok


@pytest.mark.parametrize(
    ("text", "limit_ms", "expected"),
    [
        ("A whole sentence that takes a while to say.", 30_000, MIN_SECONDS),
        ("Zero.", 30_000, 0.1),  # one word may be shorter than half a second
        ("A whole sentence that takes a while to say.", 400, 0.2),  # never more than half the limit
    ],
)
def test_shortest_plausible_duration_follows_text_and_limit(text: str, limit_ms: int, expected: float) -> None:
    assert shortest_plausible_seconds(text, limit_ms) == pytest.approx(expected)
    assert check_quality(_tone(0.4), min_seconds=shortest_plausible_seconds("Zero.", 30_000)).ok


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.5, 4.0])
def test_speed_changes_duration_not_pitch(speed: float) -> None:
    pcm = _tone(2.0, freq=400.0)
    out = change_speed(pcm, speed)
    assert len(out) == round(len(pcm) / speed)  # to the sample: atempo's last window is not lost
    assert np.abs(out[-SAMPLE_RATE // 50 :]).max() > 0.1  # the signal runs to the end
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(out) - 400) < 10


def test_streamed_stretch_matches_whole_length() -> None:
    pcm = _tone(2.0)
    stretcher = TempoStretcher(1.5)
    pieces = [stretcher.process(pcm[i : i + 1920]) for i in range(0, len(pcm), 1920)]
    assert sum(len(p) for p in pieces) > 0  # output arrives before the end
    total = sum(len(p) for p in pieces) + len(stretcher.flush())
    assert total == len(change_speed(pcm, 1.5)) == round(len(pcm) / 1.5)


@pytest.mark.parametrize("sizes", [[1, 1920], [1920] + [1] * 1500], ids=["first", "after-output"])
@pytest.mark.parametrize("speed", [2.5, 4.0])
def test_chunks_too_short_to_stretch_wait_for_more_input(speed: float, sizes: list[int]) -> None:
    """Above 2x a lone sample stretches to less than one, which `atempo` fails on (ENOMEM) when it
    has no output frame open (at the start, or right after one fills): it waits, and none is lost."""
    chunks = np.split(_tone(1.0)[: sum(sizes)], np.cumsum(sizes)[:-1])
    stretcher = TempoStretcher(speed)
    total = sum(len(stretcher.process(chunk)) for chunk in chunks) + len(stretcher.flush())
    assert total == round(sum(sizes) / speed)
    assert len(change_speed(chunks[0][:1], speed)) == 0  # one sample, whole


def test_speed_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError):
        TempoStretcher(5.0)
