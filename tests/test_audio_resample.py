"""The streaming resampler: a sine cut into chunks of any sizes comes out as the one-shot resample."""

import numpy as np
import pytest

from serve_app.audio.resample import StreamResampler, resample
from serve_app.engine.types import SAMPLE_RATE

SINE = (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)


def _ragged(signal: np.ndarray, seed: int) -> list[np.ndarray]:
    """Chunks of varied sizes: single samples, odd lengths, a frame and more, and empty ones."""
    rng = np.random.default_rng(seed)
    sizes = [1, 0, 7, 1920, 0, 3, 4801]
    chunks, at = [], 0
    while at < len(signal):
        size = sizes.pop(0) if sizes else int(rng.integers(1, 5000))
        chunks.append(signal[at : at + size])
        at += size
    return chunks


@pytest.mark.parametrize("out_rate", [8000, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_sine_matches_one_shot_resample(out_rate: int, seed: int) -> None:
    resampler = StreamResampler(SAMPLE_RATE, out_rate)
    streamed = np.concatenate([resampler.process(c) for c in _ragged(SINE, seed)] + [resampler.flush()])
    whole = resample(SINE, SAMPLE_RATE, out_rate)
    assert len(whole) == len(SINE) * out_rate // SAMPLE_RATE
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    # and that is a clean sine: no step anywhere, chunk joins included
    step = np.abs(np.diff(whole[out_rate // 100 : -out_rate // 100])).max()
    assert step <= 2 * np.pi * 440 / out_rate * 0.5 * 1.01


def test_resampling_chunks_separately_would_click() -> None:
    """What the streaming resampler avoids: chunks resampled on their own differ from the signal at
    their joins (the filter starts and ends each one against silence)."""
    pieces = [resample(c, SAMPLE_RATE, 16_000) for c in np.array_split(SINE, 25)]
    naive = np.concatenate(pieces)
    whole = resample(SINE, SAMPLE_RATE, 16_000)
    assert len(naive) == len(whole)
    assert np.abs(naive - whole).max() > 0.05


def test_stream_output_keeps_up_with_its_input() -> None:
    """Only the filter's delay is held back, so streamed audio is not delayed by more than a few ms."""
    resampler = StreamResampler(SAMPLE_RATE, 48_000)
    out = sum(len(resampler.process(c)) for c in np.array_split(SINE[:19_200], 10))  # ten 80 ms frames
    assert 2 * 19_200 - out < 48_000 * 0.01


def test_equal_rates_pass_through() -> None:
    resampler = StreamResampler(SAMPLE_RATE, SAMPLE_RATE)
    np.testing.assert_array_equal(resampler.process(SINE[:100]), SINE[:100])
    assert len(resampler.flush()) == 0
    np.testing.assert_array_equal(resample(SINE, SAMPLE_RATE, SAMPLE_RATE), SINE)
