"""Is this recording usable as a voice reference? Long enough to carry a voice, not silent, not so
long that it crowds the new speech out of the model's prompt.

A clone made from a few samples or from silence carries no voice, and the user would never be told:
such references are refused with the reason instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve_app.audio.decode import AudioInputError, AudioTooLargeError
from serve_app.audio.quality import SILENCE_RMS
from serve_app.constants import SAMPLE_RATE

__all__ = ["ReferenceLimits", "check_reference"]


@dataclass(frozen=True)
class ReferenceLimits:
    min_seconds: float = 0.5
    max_seconds: float = 30.0


def _dbfs(rms: float) -> float:
    return 20.0 * float(np.log10(max(rms, 1e-10)))


def check_reference(
    pcm: np.ndarray, limits: ReferenceLimits, field: str, sample_rate: int = SAMPLE_RATE
) -> None:
    """Raise AudioInputError (400) for too short or silent audio, AudioTooLargeError (413) for too
    long; the message names `field` and the measured value."""
    seconds = len(pcm) / sample_rate
    if seconds < limits.min_seconds:
        raise AudioInputError(
            f"{field} is too short for a voice reference: {seconds:.2f} s of audio, "
            f"at least {limits.min_seconds:g} s is needed"
        )
    if seconds > limits.max_seconds:
        raise AudioTooLargeError(
            f"{field} is too long for a voice reference: {seconds:.1f} s of audio, at most "
            f"{limits.max_seconds:g} s (it shares the model's prompt with the new speech)"
        )
    # Around the mean: a constant offset (a DC-biased interface, a muted channel) is no sound.
    rms = float(np.std(pcm, dtype=np.float64))
    if rms < SILENCE_RMS:
        raise AudioInputError(
            f"{field} is silent (level {_dbfs(rms):.0f} dBFS, below {_dbfs(SILENCE_RMS):.0f} dBFS): "
            "record the speaker closer or louder"
        )
