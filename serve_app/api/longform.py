"""Long-form speech: a script of utterances and pauses spoken as one continuous recording.

Each utterance is one engine stream, so segments of different requests share the engine's batched
steps like any other requests. An utterance hears the voice's reference turns and the segments spoken
before it (their text and the codes the engine generated for them, never decoded and re-encoded audio)
as context, so voice and prosody carry on from segment to segment.

The joins are shaped so the result plays as one recording: where a segment ends, silence longer than
`join_silence_ms` (the engine's silence guard leaves up to its whole window) is trimmed, frame by frame,
from both the audio and the codes the next segment hears; and the audio on either side of a join gets
a short fade, so no click is heard where one segment's decoder output meets the next one's. The first
sample of the whole and the end of the last segment are left as the engine made them.

`max_duration_ms` applies to the whole (speech and pauses); each segment may take at most what is left,
and, when a text has several segments, at most what its text could need (`segment_cap_ms`), so one
runaway segment cannot eat the budget of the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from serve_app.engine.types import (
    FRAME_MS,
    FRAME_SAMPLES,
    MAX_POSITIONS,
    NUM_CODEBOOKS,
    SAMPLE_RATE,
    AudioChunk,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    Segment,
)
from serve_app.text.segment import Pause, Utterance

if TYPE_CHECKING:
    from serve_app.api.synthesis import Synthesizer

__all__ = [
    "JoinShaper",
    "Line",
    "Narration",
    "Script",
    "SpeechPiece",
    "SpokenLine",
    "script_key",
    "segment_cap_ms",
]

MS_PER_CHAR = 150
"""Audio a segment may take per character of its text: about twice what CSM needs (it speaks some
15 characters a second), so a segment ends by itself (end of audio, or the silence guard), not here."""
SEGMENT_BASE_MS = 2000
MAX_SEGMENT_MS = 60_000
"""The most one segment generates (750 frames): the rest of CSM's 2048 positions hold its text and
its context."""
FADE_MS = 10
SILENCE_RMS = 0.003
"""A frame quieter than this (RMS, full scale 1.0) counts as silence: the engine's guard threshold."""


@dataclass(frozen=True)
class SpokenLine:
    """An utterance and the words the model is given for it (normalized, lexicon applied)."""

    utterance: Utterance
    spoken: str


Line = SpokenLine | Pause


@dataclass(frozen=True)
class Script:
    """A whole text, planned: what to say and where to pause."""

    lines: tuple[Line, ...]

    @property
    def utterances(self) -> int:
        return sum(isinstance(line, SpokenLine) for line in self.lines)

    @property
    def need_ms(self) -> int:
        """The most the whole may take: each segment at its cap, and its break tags' pauses."""
        return sum(segment_cap_ms(line.spoken) if isinstance(line, SpokenLine) else line.ms for line in self.lines)

    def default_budget_ms(self, floor_ms: int, ceiling_ms: int) -> int:
        """The whole's length limit when the caller gives none: enough for every segment."""
        return min(ceiling_ms, max(floor_ms, self.need_ms if self.utterances > 1 else 0))


def script_key(script: Script) -> list[str | int]:
    """What a script says and where it pauses (the part of a cache key the text decides)."""
    return [line.spoken if isinstance(line, SpokenLine) else line.ms for line in script.lines]


def segment_cap_ms(spoken: str) -> int:
    return min(MAX_SEGMENT_MS, SEGMENT_BASE_MS + MS_PER_CHAR * len(spoken))


@dataclass
class SpeechPiece:
    """Audio of the whole, in order: `pcm` starts `offset` samples in and speaks input `[start, end)`."""

    pcm: np.ndarray
    start: int
    end: int
    segment: int  # the utterance it belongs to (a pause: the utterance after it)
    offset: int
    kind: Literal["speech", "pause"] = "speech"


class JoinShaper:
    """One segment's audio, shaped for joining: trailing silence held back frame by frame (released
    when speech follows, trimmed to `keep_frames` at the end), the last `fade` samples held back for the
    fade-out, the first `fade` samples faded in when the segment follows another."""

    def __init__(self, keep_frames: int, fade_in: bool, fade: int = FADE_MS * SAMPLE_RATE // 1000) -> None:
        self.keep_frames = keep_frames
        self.fade = fade
        self._ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade + 2)[1:-1])).astype(np.float32)
        self._fade_in = fade_in
        self._released = 0  # samples released so far (for the fade-in)
        self._silent: list[tuple[np.ndarray, np.ndarray]] = []
        self._tail = np.zeros(0, np.float32)
        self._codes: list[np.ndarray] = []

    @property
    def codes(self) -> np.ndarray:
        """The frames kept (what the next segment hears)."""
        return np.concatenate(self._codes) if self._codes else np.zeros((0, NUM_CODEBOOKS), np.int64)

    def feed(self, pcm: np.ndarray, codes: np.ndarray) -> np.ndarray:
        frames = len(codes)
        if frames and len(pcm) == frames * FRAME_SAMPLES:
            blocks = pcm.reshape(frames, FRAME_SAMPLES)
            rms = np.sqrt(np.mean(np.square(blocks, dtype=np.float64), axis=1))
            out: list[np.ndarray] = []
            for i in range(frames):
                if rms[i] < SILENCE_RMS:
                    self._silent.append((blocks[i], codes[i : i + 1]))
                else:
                    out += self._take_silence(len(self._silent))
                    out.append(blocks[i])
                    self._codes.append(codes[i : i + 1])
            released = np.concatenate(out) if out else np.zeros(0, np.float32)
        else:  # not frame-aligned: nothing to judge frame by frame
            released = np.concatenate([*self._take_silence(len(self._silent)), pcm.astype(np.float32)])
            self._codes.append(codes)
        return self._release(released, final=False)

    def finish(self, fade_out: bool) -> np.ndarray:
        """The rest of the segment: at most `keep_frames` of its trailing silence, faded out if asked."""
        kept = self._take_silence(min(self.keep_frames, len(self._silent)))
        self._silent.clear()
        out = self._release(np.concatenate(kept) if kept else np.zeros(0, np.float32), final=True)
        if fade_out and len(out):
            n = min(self.fade, len(out))
            out = out.copy()
            out[-n:] *= self._ramp[::-1][-n:]
        return out

    def _take_silence(self, count: int) -> list[np.ndarray]:
        taken, self._silent = self._silent[:count], self._silent[count:]
        self._codes += [codes for _, codes in taken]
        return [pcm for pcm, _ in taken]

    def _release(self, pcm: np.ndarray, final: bool) -> np.ndarray:
        out = np.concatenate([self._tail, np.asarray(pcm, np.float32)])
        start = self._released
        if self._fade_in and start < self.fade and len(out):
            n = min(self.fade - start, len(out))
            out = out.copy()
            out[:n] *= self._ramp[start : start + n]
        if final:
            self._tail = np.zeros(0, np.float32)
        else:
            keep = min(self.fade, len(out))
            out, self._tail = out[: len(out) - keep], out[len(out) - keep :]
        self._released += len(out)
        return out


def _rows(segment: Segment) -> int:
    """Prompt rows a context turn takes, at most: a token per UTF-8 byte of `[speaker]text` (no
    tokenizer makes more), BOS and EOS, a row per frame and the end-of-audio frame."""
    frames = len(segment.codes) if segment.codes is not None else -(-len(segment.audio) // FRAME_SAMPLES)  # type: ignore[arg-type]
    return len(f"[{segment.speaker}]{segment.text}".encode()) + 2 + frames + 1


class Narration:
    """Speaks lines one after another in one recording; each utterance hears the ones before it.

    `anchor` turns (a voice's reference, the caller's context) are heard by every segment; after them
    come the latest earlier segments that fit the model's positions (at most `context_segments`,
    None: as many as fit). Iterating `say` or `run` may be stopped at any point (a client gone, a
    cancel): the engine stream of the segment in progress is closed, which frees its slot."""

    def __init__(
        self,
        synth: Synthesizer,
        *,
        anchor: Sequence[Segment] = (),
        sampling: SamplingParams,
        budget_ms: int,
        request_id: str = "",
        capped: bool = True,
        streaming: bool = True,
        quality_check: bool = False,
        context_segments: int | None = 3,
        join_silence_ms: int = 400,
    ) -> None:
        self.synth = synth
        self.anchor = list(anchor)
        self.sampling = sampling
        self.budget = budget_ms * SAMPLE_RATE // 1000
        self.request_id = request_id
        self.capped = capped
        self.streaming = streaming
        self.quality_check = quality_check
        self.context_segments = context_segments
        self.keep_frames = join_silence_ms // FRAME_MS
        self.history: list[Segment] = []
        self.requests: int = 0  # utterances sent to the engine
        self.emitted = 0  # samples handed out
        self.dropped_context_turns = 0
        self.finish_reason: FinishReason | None = None
        self.out_of_time = False
        self.engine_first_chunk: AudioChunk | None = None  # the first engine stream's, for Server-Timing

    async def encode_anchor(self) -> None:
        """Encode anchor turns given as audio once, so the segments after the first do not each
        have the engine encode them again."""
        for i, segment in enumerate(self.anchor):
            if segment.codes is None and segment.audio is not None:
                codes = await self.synth.encode_pcm(segment.audio)
                self.anchor[i] = dataclasses.replace(segment, audio=None, codes=codes)

    # -- budget -----------------------------------------------------------------------------------
    def remaining(self, limit: int | None = None) -> int:
        """Samples still allowed (within `limit`, an absolute sample count, when given)."""
        end = self.budget if limit is None else min(self.budget, limit)
        return max(0, end - self.emitted)

    # -- lines ------------------------------------------------------------------------------------
    async def run(
        self,
        lines: Sequence[Line],
        speaker: int,
        limit_ms: int | None = None,
        capped: bool | None = None,
        pause_after: bool = False,
    ) -> AsyncIterator[SpeechPiece]:
        """Speak `lines` (within `limit_ms` more audio, when given); sets `finish_reason`.
        `pause_after`: the caller adds a pause after the last line (it keeps no silence of its own).
        `capped` (default: the narration's) limits each segment by its text (`segment_cap_ms`)."""
        limit = None if limit_ms is None else self.emitted + limit_ms * SAMPLE_RATE // 1000
        speech_after = [False] * len(lines)
        for i in range(len(lines) - 2, -1, -1):
            speech_after[i] = speech_after[i + 1] or isinstance(lines[i + 1], SpokenLine)
        # A break tag's pause is the whole silence asked for: the segment before it keeps none of its own.
        pause_next = [isinstance(after, Pause) for after in [*lines[1:], None]]
        pause_next[-1:] = [pause_after] if lines else []
        for i, line in enumerate(lines):
            if self.remaining(limit) < FRAME_SAMPLES:
                self.finish_reason, self.out_of_time = FinishReason.LENGTH, True
                return
            if isinstance(line, Pause):
                piece = self.pause(line.ms, line.start, line.end, limit)
                if piece is not None:
                    yield piece
                continue
            keep = 0 if pause_next[i] else None
            async with contextlib.aclosing(
                self.say(line, speaker, fade_out=speech_after[i], limit=limit, capped=capped, keep_frames=keep)
            ) as pieces:
                async for piece in pieces:
                    yield piece

    def pause(self, ms: int, start: int = 0, end: int = 0, limit: int | None = None) -> SpeechPiece | None:
        """Silence (clipped to the budget)."""
        samples = min(ms * SAMPLE_RATE // 1000, self.remaining(limit))
        if samples <= 0:
            return None
        piece = SpeechPiece(np.zeros(samples, np.float32), start, end, self.requests, self.emitted, "pause")
        self.emitted += samples
        return piece

    async def say(
        self,
        line: SpokenLine,
        speaker: int,
        *,
        fade_out: bool = True,
        limit: int | None = None,
        capped: bool | None = None,
        keep_frames: int | None = None,
    ) -> AsyncIterator[SpeechPiece]:
        """One utterance as one engine stream; the segment joins the context of those after it.
        `keep_frames`: frames of its trailing silence kept (default: the narration's join silence)."""
        remaining = self.remaining(limit)
        if remaining < FRAME_SAMPLES:
            self.finish_reason, self.out_of_time = FinishReason.LENGTH, True
            return
        max_ms = min(MAX_SEGMENT_MS, remaining * 1000 // SAMPLE_RATE)
        if self.capped if capped is None else capped:
            max_ms = min(max_ms, segment_cap_ms(line.spoken))
        index = self.requests
        self.requests += 1
        request = GenerationRequest(
            text=line.spoken,
            speaker=speaker,
            context=self._context(line.spoken, speaker, max_ms),
            max_audio_length_ms=max_ms,
            sampling=self._sampling(index),
            request_id=self.request_id if index == 0 else f"{self.request_id}-{index}",
        )
        shaper = JoinShaper(self.keep_frames if keep_frames is None else keep_frames, fade_in=self.emitted > 0)
        start, end = line.utterance.start, line.utterance.end
        reason: FinishReason | None = None
        async with self._chunks(request) as chunks:
            async for chunk in chunks:
                if self.engine_first_chunk is None:
                    self.engine_first_chunk = chunk
                self.dropped_context_turns = max(self.dropped_context_turns, chunk.dropped_context_turns)
                if chunk.is_last:
                    reason = chunk.finish_reason
                pcm = shaper.feed(np.asarray(chunk.pcm, np.float32), np.asarray(chunk.codes))
                if len(pcm):
                    yield self._piece(pcm, start, end, index)
        tail = shaper.finish(fade_out)
        if len(tail):
            yield self._piece(tail, start, end, index)
        self.history.append(Segment(text=line.spoken, speaker=speaker, codes=shaper.codes))
        if self.finish_reason in (None, FinishReason.END_OF_AUDIO):  # a segment cut short stays reported
            self.finish_reason = reason or FinishReason.END_OF_AUDIO

    # -- helpers ----------------------------------------------------------------------------------
    def _piece(self, pcm: np.ndarray, start: int, end: int, index: int) -> SpeechPiece:
        piece = SpeechPiece(pcm, start, end, index, self.emitted)
        self.emitted += len(pcm)
        return piece

    def _sampling(self, index: int) -> SamplingParams:
        seed = self.sampling.seed
        return self.sampling if seed is None or index == 0 else dataclasses.replace(self.sampling, seed=seed + index)

    def _context(self, text: str, speaker: int, max_ms: int) -> list[Segment]:
        """The anchor turns, then the newest earlier segments that fit beside the target."""
        target = len(f"[{speaker}]{text}".encode()) + 2
        room = MAX_POSITIONS - target - max_ms // FRAME_MS - sum(_rows(s) for s in self.anchor)
        recent = self.history if self.context_segments is None else self.history[-self.context_segments :]
        chosen: list[Segment] = []
        if self.context_segments != 0:
            for segment in reversed(recent):
                room -= _rows(segment)
                if room < 0:
                    break
                chosen.insert(0, segment)
        return self.anchor + chosen

    @contextlib.asynccontextmanager
    async def _chunks(self, request: GenerationRequest) -> AsyncIterator[AsyncIterator[AudioChunk]]:
        """The engine's chunks for `request` (without `streaming`, the whole utterance as one chunk,
        quality-checked if asked); the engine stream is closed on the way out, however the caller
        leaves."""
        if not self.streaming:
            audio = await self.synth.generate(request, quality_check=self.quality_check)

            async def whole() -> AsyncIterator[AudioChunk]:
                yield AudioChunk(
                    audio.pcm, audio.codes, len(audio.codes), True, audio.finish_reason, audio.dropped_context_turns
                )

            yield whole()
            return
        stream = await self.synth.stream(request)
        chunks = stream.chunks()
        try:
            yield chunks
        finally:
            await chunks.aclose()
            await stream.aclose()
