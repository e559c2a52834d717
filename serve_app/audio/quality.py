"""Cheap checks that a generated utterance is worth returning: not silent, not clipped, not too short.

The original design rejected any peak above 0.99; a real waveform may touch that once, so "clipped"
here means a measurable fraction of samples sits at full scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from serve_app.constants import SAMPLE_RATE

__all__ = ["QualityReport", "check_quality", "shortest_plausible_seconds"]

SILENCE_RMS = 1e-3  # -60 dBFS
CLIP_LEVEL = 0.99
CLIP_FRACTION = 1e-3  # 0.1 % of samples at full scale
MIN_SECONDS = 0.5
SECONDS_PER_CHAR_FLOOR = 0.02
"""A third of CSM's usual pace (some 15 characters a second): audio shorter than this for its text
stopped early. A one-word text ("Zero.") is legitimately shorter than MIN_SECONDS."""


@dataclass(frozen=True)
class QualityReport:
    duration_s: float
    rms: float
    peak: float
    clipped_fraction: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        return (
            f"{', '.join(self.problems) or 'ok'} (duration {self.duration_s:.2f} s, rms {self.rms:.4f}, "
            f"peak {self.peak:.3f}, {self.clipped_fraction:.2%} of samples at full scale)"
        )


def shortest_plausible_seconds(text: str, max_audio_length_ms: int) -> float:
    """The least audio that can hold `text`: MIN_SECONDS, less for a short text or a short limit."""
    return min(MIN_SECONDS, SECONDS_PER_CHAR_FLOOR * len(text.strip()), max_audio_length_ms / 2000)


def check_quality(
    pcm: np.ndarray, sample_rate: int = SAMPLE_RATE, min_seconds: float = MIN_SECONDS
) -> QualityReport:
    """Measure `pcm` and list what is wrong with it ("silent", "clipped", "too short")."""
    samples = np.asarray(pcm, dtype=np.float32)
    duration = len(samples) / sample_rate
    magnitude = np.abs(samples)
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
    peak = float(magnitude.max()) if len(samples) else 0.0
    clipped = float(np.mean(magnitude >= CLIP_LEVEL)) if len(samples) else 0.0
    problems = []
    if rms < SILENCE_RMS:
        problems.append("silent")
    if clipped > CLIP_FRACTION:
        problems.append("clipped")
    if duration < min_seconds:
        problems.append("too short")
    return QualityReport(duration, rms, peak, clipped, problems)
