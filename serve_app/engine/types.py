"""Plain data types shared by the engine, the API layer and the Ray deployments.

They hold numpy arrays (not tensors) so they cross process boundaries (Ray, pickling) cheaply and
never pin GPU memory outside the engine.
"""
from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from serve_app.constants import FRAME_MS, FRAME_SAMPLES, MAX_POSITIONS, NUM_CODEBOOKS, SAMPLE_RATE

__all__ = [
    "FRAME_MS",
    "FRAME_SAMPLES",
    "MAX_POSITIONS",
    "NUM_CODEBOOKS",
    "SAMPLE_RATE",
    "Audio",
    "AudioChunk",
    "EngineOverloadedError",
    "FinishReason",
    "GenerationRequest",
    "PromptTooLongError",
    "SamplingParams",
    "Segment",
]


class FinishReason(str, enum.Enum):
    """Why an utterance ended."""

    END_OF_AUDIO = "end_of_audio"  # the model emitted the all-zero frame
    LENGTH = "length"  # the frame limit from max_audio_length_ms was reached
    SILENCE = "silence"  # the runaway guard saw a long silent tail
    CANCELLED = "cancelled"  # the caller closed the stream


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; `top_k=1` is greedy decoding."""

    temperature: float = 0.9
    top_k: int = 50
    seed: int | None = None

    def __post_init__(self) -> None:
        # The engine arms a slot with these as int64 (and float32) values for the whole admission at
        # once: a value that does not fit would fail every request admitted beside it.
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError("temperature must be a finite number > 0")
        if not 1 <= self.top_k < 1 << 63:
            raise ValueError("top_k must be >= 1 (and fit 64 bits)")
        if self.seed is not None and not -(1 << 63) <= self.seed < 1 << 63:
            raise ValueError("seed must fit a signed 64-bit integer")


@dataclass
class Segment:
    """One conversation turn used as context.

    Exactly one of `audio` (mono float32 at 24 kHz) or `codes` (int array of shape (frames, 32),
    Mimi codes without the trailing all-zero frame) is normally set; the engine turns audio into
    codes once, and sessions and saved voices keep codes.
    """

    text: str
    speaker: int
    audio: np.ndarray | None = None
    codes: np.ndarray | None = None
    required: bool = False
    """A turn the utterance must hear (a voice's reference): where the prompt cannot hold it, the
    request fails (`PromptTooLongError`) instead of speaking in another voice. Other turns are
    dropped, oldest first, before it."""

    def __post_init__(self) -> None:
        if self.audio is None and self.codes is None:
            raise ValueError("a context segment needs audio or codes")


@dataclass
class GenerationRequest:
    """Everything that determines one utterance."""

    text: str
    speaker: int = 0
    context: list[Segment] = field(default_factory=list)
    max_audio_length_ms: int = 10_000
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str | None = None
    caller: str | None = None
    """Who asked (an API key's id, or a client's address): the engine shares its slots among the
    callers waiting (`Scheduler`). None: anonymous, one caller with every other None."""

    @property
    def max_frames(self) -> int:
        return max(1, self.max_audio_length_ms // FRAME_MS)


@dataclass
class AudioChunk:
    """A piece of a streamed utterance: PCM for `frames` new Mimi frames."""

    pcm: np.ndarray  # float32, mono, 24 kHz
    codes: np.ndarray  # int64 (frames, 32)
    frames: int
    is_last: bool = False
    finish_reason: FinishReason | None = None
    dropped_context_turns: int = 0
    first_audio_ms: float | None = None  # on a stream's first chunk: ms from the request reaching the engine
    # ... and ms from the request reaching the engine to its prefill and first step queued (its way
    # in: the prompt built, the wait for the loop's next iteration); the rest of first_audio_ms is
    # the device's steps and the chunk's way back out
    admitted_ms: float | None = None
    # ... and its first part: ms to the request's sequence queued for the loop (its prompt built)
    queued_ms: float | None = None
    # On a stream's first chunk: the layers the request crossed, innermost first, each as (name,
    # wall-clock time the request entered it, wall-clock time it handed the first chunk on); the
    # API's `Server-Timing` turns consecutive layers into the hops between them (`trace_hops`).
    trace: tuple[tuple[str, float, float], ...] = ()


def trace_hops(trace: tuple[tuple[str, float, float], ...]) -> dict[str, float]:
    """Ms of each hop between consecutive layers of a first chunk's `trace`: `in_<inner>` (the
    request from the outer layer's entry to the inner's) and `out_<inner>` (the first chunk from the
    inner layer to the outer). Wall clocks: across hosts their skew moves `in` and `out` in opposite
    directions, and only their sum is exact."""
    hops = {}
    for (inner, entered, left), (_, outer_entered, outer_left) in itertools.pairwise(trace):
        hops[f"in_{inner}"] = (entered - outer_entered) * 1000
        hops[f"out_{inner}"] = (outer_left - left) * 1000
    return hops


@dataclass
class Audio:
    """A whole generated utterance."""

    pcm: np.ndarray  # float32, mono, 24 kHz
    codes: np.ndarray  # int64 (frames, 32), without the end-of-audio frame
    finish_reason: FinishReason
    dropped_context_turns: int = 0
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.sample_rate


class PromptTooLongError(ValueError):
    """The text (with the turns it requires) cannot fit the model's positions together with the
    requested length."""


class EngineOverloadedError(RuntimeError):
    """No free slot or GPU memory: the caller should retry later (HTTP 503)."""
