"""One request's life inside the engine: its prompt, slot, generated frames and streaming progress.

A `Sequence` is created by the engine front end, queued by the scheduler, stepped by the engine loop
and finished exactly once. Everything here is host-side bookkeeping (no tensors on the device).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from serve_app.engine.types import NUM_CODEBOOKS, AudioChunk, FinishReason, GenerationRequest

ChunkSink = Callable[[AudioChunk | BaseException], None]
"""Receives a sequence's chunks (the last one has `is_last=True`) or the error that ended it.
Called on the engine loop thread: it must only hand the item over (e.g. to a queue)."""

class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class ChunkPolicy:
    """Frames per streamed chunk: a small first chunk for early audio, larger ones after it.

    With `ramp`, chunk sizes double from the first up to `frames` (1, 2, 4, 8, 8, ...): each chunk is
    generated while the one before it plays, even on a loaded engine whose steps take longer than a
    frame lasts. Without it a 1-frame first chunk (80 ms of audio) is followed by a chunk
    that needs `frames` steps, and a listener hears a gap whenever those steps take over 80 ms.

    With `align`, a later chunk also ends on the loop's frame clock: one that starts at global frame
    g is at most `lowbit(g)` frames long (1, 2, 4, ... the largest power of two dividing g), so every
    stream's 8-frame chunks start on multiples of 8 and complete on the same step. The audio decoder
    then decodes them in one launch, where streams that joined at different steps would each take a
    launch of their own (a launch costs about as much as 16 streams' worth of frames). Sizes still
    at most double from one chunk to the next, so the ramp's no-gap property holds."""

    first_frames: int = 1
    frames: int = 8
    ramp: bool = False
    align: bool = False

    def __post_init__(self) -> None:
        if self.first_frames < 1 or self.frames < 1:
            raise ValueError("chunk sizes must be >= 1 frame")

    def target(self, chunks_sent: int) -> int:
        if chunks_sent == 0:
            return self.first_frames
        if self.ramp:
            return max(self.first_frames, min(self.frames, self.first_frames << chunks_sent))
        return self.frames

    def next_size(self, chunks_sent: int, start: int) -> int:
        """Frames in the next chunk of a stream that has sent `chunks_sent` chunks, when that chunk
        starts at global frame `start` (the loop's step count at the chunk's first frame)."""
        target = self.target(chunks_sent)
        if not self.align or chunks_sent == 0 or start <= 0:
            return target
        return min(target, start & -start)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Every chunk size a stream is cut into (the audio decoder prepares one graph for each)."""
        targets, n = {self.first_frames, self.frames}, 1
        # Ramped targets grow until they repeat (`frames`, or `first_frames` when that is the larger).
        while self.ramp and self.target(n) not in targets:
            targets.add(self.target(n))
            n += 1
        sizes = set(targets)
        if self.align:  # a target cut to a power of two below it
            for target in targets:
                sizes.update(1 << i for i in range(target.bit_length()) if 1 << i < target)
        return tuple(sorted(sizes))

    @property
    def largest(self) -> int:
        return max(self.first_frames, self.frames)


@dataclass(eq=False)
class Sequence:
    """A request being generated. `tokens`/`mask` are the prompt rows (T, 33) on the host."""

    request: GenerationRequest
    tokens: torch.Tensor
    mask: torch.Tensor
    seed: int
    sink: ChunkSink
    max_frames: int
    dropped_context_turns: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    slot: int | None = None
    # Decode steps launched: frames computed or in flight, including an end-of-audio frame and the
    # frame launched before it was seen (both discarded). Never more than `max_frames`.
    steps: int = 0
    frames: list[np.ndarray] = field(default_factory=list)  # kept frames (32,), without end-of-audio
    decoded: int = 0  # frames handed to the audio decoder (a first chunk may cover an end-of-audio frame)
    chunks_sent: int = 0
    first_step: int = 0  # the loop's step count when this sequence's first frame was launched
    admitted_at: float | None = None  # perf_counter() when its prefill and first step were queued
    silent_frames: int = 0  # trailing frames whose audio is below the silence threshold
    finish_reason: FinishReason | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if (
            self.tokens.ndim != 2
            or self.tokens.shape != self.mask.shape
            or self.tokens.shape[1] != NUM_CODEBOOKS + 1
        ):
            raise ValueError(f"prompt rows must be (T, {NUM_CODEBOOKS + 1}), got {tuple(self.tokens.shape)}")
        if self.max_frames < 1:
            raise ValueError("max_frames must be >= 1")

    @property
    def prompt_len(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def next_position(self) -> int:
        """Backbone position the next decode step writes: the last prompt row, then one per frame."""
        return self.prompt_len - 1 + self.steps

    @property
    def stepping(self) -> bool:
        """Gets the next decode step: not ended, and fewer steps launched than its length."""
        return self.finish_reason is None and self.steps < self.max_frames

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the loop to stop this sequence at the next frame boundary (thread-safe)."""
        self._cancel.set()

    def pending(self) -> int:
        """Frames launched (computed or in flight) but not yet handed to the audio decoder."""
        return self.steps - self.decoded

    def undecoded(self) -> int:
        """Kept frames on the host not yet handed to the audio decoder."""
        return len(self.frames) - self.decoded

    def emit(self, chunk: AudioChunk) -> None:
        self.chunks_sent += 1
        self.sink(chunk)
