"""Sample-rate conversion with soxr, whole or as a stream of chunks.

The streaming resampler keeps soxr's filter state between chunks, so a stream cut into chunks of any
sizes comes out sample for sample as the whole signal resampled at once: no clicks at chunk joins.
It holds back a few milliseconds (the filter's delay) until `flush()`.
"""

from __future__ import annotations

import numpy as np
import soxr

__all__ = ["QUALITY", "StreamResampler", "resample"]

QUALITY = "HQ"
"""soxr's high-quality preset: 20-bit precision, flat to 91 % of the lower Nyquist frequency."""

_EMPTY = np.zeros(0, np.float32)


def resample(pcm: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Mono float32 `pcm` at `in_rate` → at `out_rate` (the input itself when the rates match)."""
    pcm = np.ascontiguousarray(pcm, dtype=np.float32)
    if in_rate == out_rate:
        return pcm
    return soxr.resample(pcm, in_rate, out_rate, quality=QUALITY)


class StreamResampler:
    """Chunks at `in_rate` in, chunks at `out_rate` out; call `flush()` once at the end."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=QUALITY)
        )

    def process(self, pcm: np.ndarray) -> np.ndarray:
        pcm = np.ascontiguousarray(pcm, dtype=np.float32)
        if self._stream is None:
            return pcm
        return self._stream.resample_chunk(pcm) if len(pcm) else _EMPTY

    def flush(self) -> np.ndarray:
        """The samples still inside the filter."""
        if self._stream is None:
            return _EMPTY
        return self._stream.resample_chunk(_EMPTY, last=True)
