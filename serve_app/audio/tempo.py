"""Speed changes without pitch change, with FFmpeg's `atempo` filter (WSOLA) through PyAV.

Used for OpenAI's `speed` (0.25–4.0). `atempo` takes 0.5–100 per instance, so slower speeds chain
two instances. The filter keeps state between chunks, so a stream is stretched as one signal
(no clicks at chunk boundaries).
"""

from __future__ import annotations

import av
import av.filter
import numpy as np

from serve_app.constants import SAMPLE_RATE

__all__ = ["MAX_SPEED", "MIN_SPEED", "TempoStretcher", "change_speed"]

MIN_SPEED = 0.25
MAX_SPEED = 4.0


def _atempo_factors(speed: float) -> list[float]:
    factors = []
    while speed < 0.5:
        factors.append(0.5)
        speed /= 0.5
    return factors + [speed]


_FLUSH_PAD_S = 0.1
"""Silence pushed through at the end: `atempo` keeps its last partial window (20-40 ms of the
signal's end) unless more input follows; the output is then cut to the stretched length."""

_NO_SAMPLES = np.zeros(0, np.float32)


class TempoStretcher:
    """Streaming time-stretch: `process(chunk)` returns what is ready, `flush()` the rest; all of it
    together is the input's length divided by the speed, to the sample."""

    def __init__(self, speed: float, sample_rate: int = SAMPLE_RATE) -> None:
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be within {MIN_SPEED}..{MAX_SPEED}, got {speed}")
        self._rate = sample_rate
        self._speed = speed
        self._pts = 0  # input samples pushed
        self._emitted = 0  # output samples returned
        self._held = _NO_SAMPLES  # input too short to push yet
        self._graph = av.filter.Graph()
        node = self._graph.add_abuffer(
            format="flt", sample_rate=sample_rate, layout="mono", time_base=f"1/{sample_rate}"
        )
        for factor in _atempo_factors(speed):
            stage = self._graph.add("atempo", f"{factor:.6f}")
            node.link_to(stage)
            node = stage
        node.link_to(self._graph.add("abuffersink"))
        self._graph.configure()

    def process(self, pcm: np.ndarray) -> np.ndarray:
        if len(self._held):
            pcm = np.concatenate([self._held, pcm])
        # `atempo` fails (ENOMEM) on a frame that stretches to less than one sample: hold it back
        # until more input comes or the flush's padding carries it.
        if len(pcm) < self._speed:
            self._held = np.array(pcm, np.float32)  # a copy: the caller may reuse its buffer
            return _NO_SAMPLES
        self._held = _NO_SAMPLES
        self._push(pcm)
        out = self._pull()
        self._emitted += len(out)
        return out

    def flush(self) -> np.ndarray:
        expected = round((self._pts + len(self._held)) / self._speed)
        self._push(np.concatenate([self._held, np.zeros(int(self._rate * _FLUSH_PAD_S), np.float32)]))
        self._held = _NO_SAMPLES
        self._graph.push(None)
        tail = self._pull()[: max(0, expected - self._emitted)]
        self._emitted += len(tail)
        return tail

    def _push(self, pcm: np.ndarray) -> None:
        if len(pcm) == 0:
            return
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm, dtype=np.float32)[None, :], format="flt", layout="mono"
        )
        frame.sample_rate = self._rate
        frame.pts = self._pts
        self._pts += frame.samples
        self._graph.push(frame)

    def _pull(self) -> np.ndarray:
        out: list[np.ndarray] = []
        while True:
            try:
                out.append(self._graph.pull().to_ndarray().reshape(-1))
            except (BlockingIOError, av.EOFError):
                break
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def change_speed(pcm: np.ndarray, speed: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Whole-signal time-stretch; speed 1.0 returns the input unchanged."""
    if speed == 1.0:
        return pcm
    stretcher = TempoStretcher(speed, sample_rate)
    return np.concatenate([stretcher.process(pcm), stretcher.flush()])
