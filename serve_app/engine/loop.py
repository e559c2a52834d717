"""The continuous-batching loop: one iteration = admit, one decode step for every live slot, decode
ready audio chunks, then hand chunks to their streams and retire finished sequences.

Per iteration the host waits for the device once (codes and chunk audio come back together). Chunk
audio is decoded from the device-side history ring right after the step is launched, so a frame's
audio leaves in the same iteration that computed it. If that frame turns out to be the end-of-audio
frame, its samples are cut from the chunk.

The loop runs on its own thread (`start`) or is driven by hand (`run_once`, for tests); sequences
arrive and get cancelled from any thread.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from serve_app.engine.runner import ModelRunner
from serve_app.engine.scheduler import Scheduler
from serve_app.engine.sequence import ChunkPolicy, Sequence
from serve_app.engine.types import FRAME_MS, AudioChunk, FinishReason

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SilenceGuard:
    """Stop a runaway utterance after `seconds` of audio below `rms` (0 seconds: off)."""

    rms: float = 0.003
    seconds: float = 2.4

    @property
    def frames(self) -> int:
        return round(self.seconds * 1000 / FRAME_MS)

    @property
    def enabled(self) -> bool:
        return self.seconds > 0


DEFAULT_CHUNKS = ChunkPolicy()
DEFAULT_SILENCE_GUARD = SilenceGuard()


@dataclass
class _Decoded:
    seqs: list[Sequence]
    first: list[int]  # first frame of each sequence's chunk
    count: int  # frames of the chunk (the decode may have run on more: the rest is dropped)
    pcm: Any  # device tensor (B, decoded frames * frame_samples), then host array


class EngineLoop:
    def __init__(
        self,
        runner: ModelRunner,
        scheduler: Scheduler,
        chunks: ChunkPolicy = DEFAULT_CHUNKS,
        silence: SilenceGuard = DEFAULT_SILENCE_GUARD,
        eos_id: int = 0,
    ) -> None:
        if chunks.largest > runner.history_len:
            raise ValueError(
                f"chunks of {chunks.largest} frames exceed the history ring ({runner.history_len})"
            )
        if set(runner.audio_chunk_sizes) != {chunks.first_frames, chunks.frames}:
            raise ValueError("the runner's audio chunk sizes must be the chunk policy's")
        self.runner = runner
        self.scheduler = scheduler
        self.chunks = chunks
        self.silence = silence
        self.eos_id = eos_id
        self.steps = 0
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ---- thread -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="csm-engine-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.scheduler.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    def submit(self, seq: Sequence) -> None:
        """Queue a sequence (raises `EngineOverloadedError` when the waiting queue is full)."""
        if self.error is not None:
            raise RuntimeError(f"engine loop failed: {self.error!r}")
        self.scheduler.add(seq)

    def cancel(self, seq: Sequence) -> None:
        seq.cancel()
        self.scheduler.notify()

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                if not self.scheduler.wait_for_work(timeout=0.5):
                    continue
                try:
                    self.run_once()
                except BaseException as exc:
                    logger.exception("engine loop failed")
                    self.error = exc
                    self.abort(exc)
                    return

    def abort(self, exc: BaseException) -> None:
        """End every running and waiting sequence with `exc` (the loop failed or was stopped)."""
        for seq in self.scheduler.drain():
            if seq.slot is not None:
                self.runner.release(seq.slot)
            seq.sink(exc)

    # ---- one iteration ------------------------------------------------------------------------
    @torch.inference_mode()
    def run_once(self) -> bool:
        """One frame for every live sequence; returns False when there was nothing to do."""
        for seq in self.scheduler.cancelled():
            self._retire(seq, FinishReason.CANCELLED, notify=False)
        joined = self.scheduler.admit()
        if joined:
            try:
                self.runner.start(joined)
            except Exception as exc:  # e.g. out of memory on an unusually long prompt: fail these only
                logger.exception("prefill failed for %d requests", len(joined))
                for seq in joined:
                    self._retire(seq, FinishReason.CANCELLED, notify=False)
                    seq.sink(exc)
        live = list(self.scheduler.running.values())
        if not live:
            return False
        rows = max(s.slot for s in live) + 1  # type: ignore[type-var]
        self.runner.step(rows, max(s.next_position for s in live) + 1)
        self.steps += 1
        for seq in live:
            seq.steps += 1
        decoded = self._launch_decodes(live, final=False)
        host = self.runner.fetch([self.runner.codes[:rows]] + [d.pcm for d in decoded])
        codes, pcms = host[0], host[1:]
        for d, pcm in zip(decoded, pcms):
            d.pcm = pcm
        ended = [seq for seq in live if self._take_frame(seq, codes[seq.slot])]
        for d in decoded:
            self._emit(d)
        # Sequences that ended with frames still waiting for audio: flush them now.
        flush = [s for s in ended if not s.finished and s.pending() > 0]
        if flush:
            final = self._launch_decodes(flush, final=True)
            for d, pcm in zip(final, self.runner.fetch([d.pcm for d in final])):
                d.pcm = pcm
                self._emit(d)
        for seq in ended:
            if not seq.finished:
                self._emit_last(seq)
        return True

    def _take_frame(self, seq: Sequence, frame: np.ndarray) -> bool:
        """Record the step's frame; True when the sequence has ended (end of audio or length)."""
        if seq.finished or seq.finish_reason is not None:
            return seq.finish_reason is not None
        if bool((frame == self.eos_id).all()):
            seq.finish_reason = FinishReason.END_OF_AUDIO
            seq.steps -= 1  # the end-of-audio frame is not audio
            seq.decoded = min(seq.decoded, seq.steps)
            return True
        seq.frames.append(frame.copy())
        if len(seq.frames) >= seq.max_frames:
            seq.finish_reason = FinishReason.LENGTH
            return True
        return False

    def _launch_decodes(self, seqs: list[Sequence], final: bool) -> list[_Decoded]:
        """Group sequences whose pending frames fill a chunk (or all pending frames when `final`, or
        when this step is a sequence's last by length) by chunk size; launch one decode per group."""
        groups: dict[int, list[Sequence]] = defaultdict(list)
        for seq in seqs:
            pending = seq.pending()
            if pending <= 0:
                continue
            last_by_length = seq.steps >= seq.max_frames
            if final or last_by_length or pending >= self.chunks.target(seq.chunks_sent):
                groups[pending].append(seq)
        out = []
        for n, group in sorted(groups.items()):
            first = [s.decoded for s in group]
            size = n if n in self.runner.audio_chunk_sizes else self.runner.final_chunk_size(n)
            pcm = self.runner.decode_audio([s.slot for s in group], first, size)  # type: ignore[misc]
            for s in group:
                s.decoded += n
            out.append(_Decoded(group, first, n, pcm))
        return out

    def _emit(self, d: _Decoded) -> None:
        fs = self.runner.frame_samples
        for i, seq in enumerate(d.seqs):
            if seq.finished:
                continue
            # Frames of this chunk that are audio (the end-of-audio frame, if any, is cut).
            kept = max(0, min(d.count, len(seq.frames) - d.first[i]))
            pcm = np.ascontiguousarray(d.pcm[i, : kept * fs], dtype=np.float32)
            codes = (
                np.stack(seq.frames[d.first[i] : d.first[i] + kept]) if kept else np.zeros((0, 32), np.int64)
            )
            if kept and self._silent_tail(seq, pcm, kept) and seq.finish_reason is None:
                seq.finish_reason = FinishReason.SILENCE
            last = seq.finish_reason is not None and seq.decoded >= seq.steps
            seq.emit(
                AudioChunk(
                    pcm=pcm,
                    codes=codes.astype(np.int64),
                    frames=kept,
                    is_last=last,
                    finish_reason=seq.finish_reason if last else None,
                    dropped_context_turns=seq.dropped_context_turns,
                )
            )
            if last:
                self._retire(seq, seq.finish_reason, notify=False)  # type: ignore[arg-type]

    def _emit_last(self, seq: Sequence) -> None:
        """An empty closing chunk for a sequence whose audio was all sent before it ended."""
        reason = seq.finish_reason or FinishReason.LENGTH
        seq.emit(
            AudioChunk(
                pcm=np.zeros(0, np.float32),
                codes=np.zeros((0, 32), np.int64),
                frames=0,
                is_last=True,
                finish_reason=reason,
                dropped_context_turns=seq.dropped_context_turns,
            )
        )
        self._retire(seq, reason, notify=False)

    def _silent_tail(self, seq: Sequence, pcm: np.ndarray, frames: int) -> bool:
        if not self.silence.enabled:
            return False
        rms = np.sqrt(np.mean(np.square(pcm.reshape(frames, -1), dtype=np.float64), axis=1))
        for value in rms:
            seq.silent_frames = seq.silent_frames + 1 if value < self.silence.rms else 0
        return seq.silent_frames >= self.silence.frames

    def _retire(self, seq: Sequence, reason: FinishReason, notify: bool) -> None:
        slot = seq.slot
        was_running = slot is not None and self.scheduler.running.get(slot) is seq
        self.scheduler.finish(seq, reason)
        if was_running:
            self.runner.release(slot)  # type: ignore[arg-type]
        if notify:
            seq.emit(
                AudioChunk(
                    pcm=np.zeros(0, np.float32),
                    codes=np.zeros((0, 32), np.int64),
                    frames=0,
                    is_last=True,
                    finish_reason=reason,
                )
            )

    def stats(self) -> dict[str, Any]:
        return {"steps": self.steps, **self.scheduler.counts()}
