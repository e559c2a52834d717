"""The continuous-batching loop: requests join at frame boundaries, every live slot gets one frame
per decode step, audio chunks stream out, finished sequences leave.

Up to two decode steps are in flight, so the device does not sit idle while the host works: a step's
input (the previous frame's embeddings, positions, frame counters) lives on the device and is
advanced by the step itself, so step N+1 can be queued before the host has read step N's codes.
An iteration:
  1. drops cancelled sequences and admits waiting ones (their prefill is queued on the device);
  2. launches step N+1 (CUDA graphs on a GPU) for every sequence still generating; its codes are
     copied to a host buffer of its own behind it;
  3. waits for step N's codes only (and the audio decoded since last iteration), records each
     sequence's frame, and stops sequences that hit end of audio or their length;
  4. while the device runs step N+1: hands finished chunks to their streams, then launches the audio
     decode of every chunk whose frames are complete, on the runner's audio stream (steps and
     prefills run on a stream of higher priority). Later chunks end on the loop's frame clock
     (`ChunkPolicy.align`), so the chunks of streams that joined at different steps complete
     together and decode in one launch per size.
End of audio is thus seen one step late: the frame step N+1 computed past it is discarded and the
slot stops being stepped. Lengths are known on the host, so no step is launched past one. A step's
codes go to the sequences it was launched for, and only while they are still generating: a sequence
cancelled or silenced meanwhile, or admitted into a slot freed meanwhile, gets nothing from it.
A stream's first chunk, and the rest of a stream at its last step (its length), are decoded right
after the step that completes them (lowest time to first audio; the end, and the slot, an iteration
sooner); if that step's frame turns out to be the end-of-audio frame, its samples are cut from the
chunk. A finished sequence keeps its slot (no longer stepped) until its last chunk is out.

The loop runs on its own thread (`start`) or is driven by hand (`run_once`, for tests); sequences
arrive and get cancelled from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from serve_app.engine.launch_log import LaunchLog
from serve_app.engine.runner import DecodedAudio, ModelRunner, StepOutput
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


FIRST_AUDIO_BEFORE_ONE_LAUNCH_FRAME = True
"""Whether a step whose frame runs as one persistent launch (one row: `ModelRunner.one_launch_frame`)
waits on the device for a stream's first-chunk decode queued before it. The loop's programs fill every
SM, so that decode, queued beside the frame, otherwise waits for the loop's end: on an H100 the idle
first audio rose 14.4 → 17.9 ms with the loop (`benchmarks/results/2026-12-06-1009-…`). Waiting
delays that frame by the decode instead. On: idle first audio 18.3 → 13.7 ms p50 on an H100, one
stream's frame 5.93 → 6.06 ms averaged over 50 frames (one of them waits for the decode;
`benchmarks/results/2026-12-06-1222-nvidia-h100-80gb-hbm3-engine-first-audio-{off,on}.json`)."""

SLOW_ITERATION_S = 1.0
"""An iteration (milliseconds, normally) this slow is logged, with what was launched before it."""

LAUNCH_LOG = 24
"""Device launches remembered for that log line (a few iterations' worth)."""

StepObserver = Callable[[int, int], None]
"""Told `(batch_size, queue_depth)` after an iteration that changed either (e.g. metrics gauges)."""

DEFAULT_CHUNKS = ChunkPolicy()
DEFAULT_SILENCE_GUARD = SilenceGuard()


@dataclass
class _Step:
    """A launched decode step and the sequences it computes a frame for (as of its launch)."""

    seqs: list[Sequence]
    out: StepOutput


@dataclass
class _Chunk:
    """Audio decode of `count` frames from `first` on, for each sequence of a group."""

    seqs: list[Sequence]
    first: list[int]
    count: int
    after: StepOutput | None = None  # the uncollected step a first chunk waits for (its last frame)
    opening: bool = False  # some stream's first chunk
    decoded: DecodedAudio | None = None  # the decode launched, until fetched
    pcm: Any = None  # host array (B, decoded frames * frame_samples), once fetched
    rms: Any = None  # each decoded frame's loudness (B, decoded frames), once fetched


class EngineLoop:
    def __init__(
        self,
        runner: ModelRunner,
        scheduler: Scheduler,
        chunks: ChunkPolicy = DEFAULT_CHUNKS,
        silence: SilenceGuard = DEFAULT_SILENCE_GUARD,
        eos_id: int = 0,
        on_step: StepObserver | None = None,
    ) -> None:
        # Frames still to decode lie at most `largest` behind the newest frame the host has read, and
        # neither the steps in flight nor a stopped slot's idle rewrites write more than two frames
        # past it: `largest + 3` ring frames are enough, within this bound (the engine sizes by it).
        if 2 * chunks.largest + 2 > runner.history_len:
            raise ValueError(
                f"chunks of {chunks.largest} frames need a history ring of {2 * chunks.largest + 2}"
            )
        if set(runner.audio_chunk_sizes) != set(chunks.sizes):
            raise ValueError("the runner's audio chunk sizes must be the chunk policy's")
        self.runner = runner
        self.scheduler = scheduler
        self.chunks = chunks
        self.silence = silence
        self.eos_id = eos_id
        self.on_step = on_step
        self._observed = (0, 0)
        self.steps = 0
        self.error: BaseException | None = None
        self._step: _Step | None = None  # launched, codes not collected yet
        self._audio: list[_Chunk] = []  # decodes launched last iteration, collected with the step
        # Seconds per phase of an iteration: admission + prefill + step launch, waiting for the step
        # before it, chunk hand-over + audio decode launches (overlapping the step), for benchmarks.
        self.timings: dict[str, float] = dict.fromkeys(("iterations", "wait_s", "launch_s", "host_s"), 0.0)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._iteration_began: float | None = None  # monotonic start of the loop thread's iteration
        # What the last iterations queued on the device, for the log line of a slow iteration (its
        # wait covers work queued by the iteration before it too), with the device's time for each.
        self.launches = LaunchLog(LAUNCH_LOG, timed=runner.device.type == "cuda")

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

    def iteration_s(self) -> float:
        """Seconds the loop thread has been in its current iteration (0 between iterations): an
        iteration takes milliseconds, so seconds mean the loop is stuck."""
        began = self._iteration_began
        return 0.0 if began is None else time.monotonic() - began

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
                self._iteration_began = began = time.monotonic()
                try:
                    self.run_once()
                except BaseException as exc:
                    logger.exception("engine loop failed")
                    self.error = exc
                    self.abort(exc)
                    return
                finally:
                    self._iteration_began = None
                if (took := time.monotonic() - began) > SLOW_ITERATION_S:
                    self._log_slow_iteration(took)

    def _log_slow_iteration(self, took: float) -> None:
        """Say what was queued on the device before a slow iteration, and whether the slots'
        positions (the attention kernel's loop bounds) were sane."""
        positions = self.runner.slot_positions()  # the wait is over: this read costs little
        live = [p for p in positions if p >= 0]
        logger.warning(
            "engine loop iteration took %.2f s (%s); positions: %d live, max %s; launched before it: %s",
            took,
            self.scheduler.counts(),
            len(live),
            max(live, default=None),
            self.launches.describe(),
        )

    def abort(self, exc: BaseException) -> None:
        """End every running and waiting sequence with `exc` (the loop failed or was stopped)."""
        self._step, self._audio = None, []
        for seq in self.scheduler.drain():
            if seq.slot is not None:
                self.runner.release(seq.slot)
            seq.sink(exc)

    # ---- one iteration ------------------------------------------------------------------------
    @torch.inference_mode()
    def run_once(self) -> bool:
        """Launch the next step, then finish the one before it; returns False when there was nothing to do."""
        t0 = time.perf_counter()
        for seq in self.scheduler.cancelled():
            self._retire(seq, FinishReason.CANCELLED)
        self._admit()
        launched = self._launch_step()
        t1 = time.perf_counter()
        previous, self._step = self._step, launched
        done = self._collect(previous)
        t2 = time.perf_counter()
        for chunk in done:
            self._emit(chunk)
        self._audio = self._launch_chunks() + self._launch_behind_step(launched)
        self.runner.flush_deactivated()  # the slots this iteration stopped, in one fill
        t3 = time.perf_counter()
        for key, value in (("launch_s", t1 - t0), ("wait_s", t2 - t1), ("host_s", t3 - t2)):
            self.timings[key] += value
        self.timings["iterations"] += 1
        self._observe(len(launched.seqs) if launched else 0)
        return bool(launched or previous or done or self._audio)

    def _observe(self, batch_size: int) -> None:
        observed = (batch_size, len(self.scheduler.waiting))
        if self.on_step is not None and observed != self._observed:
            self._observed = observed
            try:
                self.on_step(*observed)
            except Exception:  # an observer must never stop generation
                logger.exception("step observer failed")

    def _launch_step(self) -> _Step | None:
        """Launch a step for every sequence still generating. A sequence's last step (its length) also
        stops its slot, queued behind the step, so later steps skip the row."""
        seqs = [s for s in self.scheduler.running.values() if s.stepping]
        if not seqs:
            return None
        rows = max(s.slot for s in seqs) + 1  # type: ignore[type-var]
        positions = max(s.next_position for s in seqs) + 1
        form, stream = "step rows={} positions<{}", self.runner.step_stream
        if (
            FIRST_AUDIO_BEFORE_ONE_LAUNCH_FRAME
            and any(c.opening for c in self._audio)
            and self.runner.one_launch_frame(rows)
        ):
            self.runner.step_after_audio()
        with self.launches.launch(self.steps, form, rows, positions, stream=stream):
            out = self.runner.step(rows, positions)
        self.steps += 1
        for seq in seqs:
            if seq.steps == 0:
                seq.first_step = self.steps - 1
            seq.steps += 1
            if seq.steps >= seq.max_frames:
                self.runner.deactivate(seq.slot)  # type: ignore[arg-type]
        return _Step(seqs, out)

    def _collect(self, step: _Step | None) -> list[_Chunk]:
        """Wait for `step` (not the steps after it) and last iteration's audio decodes; record the
        step's frames; return the decoded chunks."""
        chunks, self._audio = self._audio, []
        if step is None and not chunks:
            return []
        codes, host = self.runner.fetch(step.out if step else None, [c.decoded for c in chunks])  # type: ignore[misc]
        if step is not None and codes is not None:
            eos = (codes == self.eos_id).all(axis=1)
            for seq in step.seqs:
                # A sequence that ended since the launch (end of audio seen in the step before,
                # silence, cancel) gets nothing: this frame is past its end.
                if seq.finish_reason is None:
                    self._take_frame(seq, codes[seq.slot], bool(eos[seq.slot]))
        for chunk, (pcm, rms) in zip(chunks, host, strict=True):
            chunk.pcm, chunk.rms = pcm, rms
        return chunks

    def _admit(self) -> None:
        joined = self.scheduler.admit()
        if not joined:
            return
        try:
            self._start(joined)
        except Exception as exc:  # e.g. out of memory on one unusually long prompt: the others may fit alone
            if len(joined) == 1:
                self._fail_admission(joined, exc)
                return
            logger.warning("prefill of %d prompts together failed; starting them one at a time", len(joined),
                           exc_info=True)
            for seq in joined:
                self.runner.release(seq.slot)  # type: ignore[arg-type]  # drops what the failed start staged
            for seq in joined:
                try:
                    self._start([seq])
                except Exception as exc:  # noqa: BLE001 - its own prefill failed: logged and ended alone
                    self._fail_admission([seq], exc)

    def _start(self, seqs: list[Sequence]) -> None:
        """Prefill and arm `seqs`; they are admitted once it returns."""
        form, stream = "prefill {} prompts of {} rows", self.runner.step_stream
        with self.launches.launch(self.steps, form, len(seqs), [s.prompt_len for s in seqs], stream=stream):
            self.runner.start(seqs)
        admitted = time.perf_counter()  # their first step is launched next, in this iteration
        for seq in seqs:
            seq.admitted_at = admitted

    def _fail_admission(self, seqs: list[Sequence], exc: Exception) -> None:
        """End `seqs`, whose prefill raised `exc`, with that error (logged with its traceback: called
        while it is handled)."""
        ids = [seq.request.request_id for seq in seqs]  # the API's request ids: which requests failed
        logger.exception("prefill failed for %d requests (%s)", len(seqs), ", ".join(map(str, ids)),
                         extra={"request_ids": ids})
        for seq in seqs:
            self._retire(seq, FinishReason.CANCELLED)
            seq.sink(exc)

    def _take_frame(self, seq: Sequence, frame: np.ndarray, end_of_audio: bool) -> None:
        """Record the step's frame; end the sequence on end of audio or at its length."""
        if end_of_audio:
            seq.finish_reason = FinishReason.END_OF_AUDIO
            # The step after this one already computed a frame past the end (discarded); stop the slot.
            self.runner.deactivate(seq.slot)  # type: ignore[arg-type]
            return
        seq.frames.append(frame.copy())
        if len(seq.frames) >= seq.max_frames:
            seq.finish_reason = FinishReason.LENGTH  # its slot stopped with its last launch

    def _launch(self, chunk: _Chunk) -> None:
        size = self.runner.final_chunk_size(chunk.count)
        slots = [s.slot for s in chunk.seqs]
        form = "audio {} streams x {} frames"
        with self.launches.launch(self.steps, form, len(slots), size, stream=self.runner.audio_stream):
            chunk.decoded = self.runner.decode_audio(slots, chunk.first, size, after=chunk.after)  # type: ignore[arg-type]

    def _launch_behind_step(self, step: _Step | None) -> list[_Chunk]:
        """Chunks that the step just launched completes, decoded right behind it (one launch per
        size); their frames reach the host together with the audio, next iteration:
        - a stream's first chunk (lowest time to first audio);
        - the rest of a stream whose last step this is (its length is known on the host): its end
          reaches the client, and its slot is freed, an iteration sooner than if the rest waited
          for the step's codes. Each request of a client that speaks turn after turn then starts
          sooner, so a slot spends less of its time idle between requests."""
        if step is None:
            return []
        groups: dict[int, list[Sequence]] = defaultdict(list)
        for seq in step.seqs:
            if seq.finish_reason is not None:
                continue
            pending, last_step = seq.pending(), seq.steps >= seq.max_frames
            if seq.chunks_sent == 0 and seq.decoded == 0:
                if pending >= self.chunks.first_frames or last_step:
                    groups[pending].append(seq)
            elif last_step and 0 < pending <= self.chunks.largest:
                groups[pending].append(seq)
        out = []
        for count, group in sorted(groups.items()):
            opening = any(s.chunks_sent == 0 and s.decoded == 0 for s in group)
            chunk = _Chunk(group, [s.decoded for s in group], count, after=step.out, opening=opening)
            for seq in group:
                seq.decoded += count
            self._launch(chunk)
            out.append(chunk)
        return out

    def _launch_chunks(self) -> list[_Chunk]:
        """Launch the audio decode of every chunk whose frames are all known (a full chunk, or the
        rest of an ended stream), grouped by size; close streams that ended with nothing left.
        A chunk is `ChunkPolicy.next_size` frames from the stream's global frame clock."""
        groups: dict[int, list[Sequence]] = defaultdict(list)
        for seq in list(self.scheduler.running.values()):
            if seq.finished:
                continue
            known = seq.undecoded()
            ended = seq.finish_reason is not None
            size = self.chunks.next_size(seq.chunks_sent, seq.first_step + seq.decoded)
            if known > 0 and (ended or known >= size):
                # An ended stream's rest in pieces of at most the largest size (its decode graphs).
                groups[min(known, self.chunks.largest) if ended else size].append(seq)
            elif ended:
                self._emit_last(seq)
        out = []
        for count, group in sorted(groups.items()):
            chunk = _Chunk(group, [s.decoded for s in group], count)
            for seq in group:
                seq.decoded += count
            self._launch(chunk)
            out.append(chunk)
        return out

    def _emit(self, chunk: _Chunk) -> None:
        fs = self.runner.frame_samples
        for i, seq in enumerate(chunk.seqs):
            if seq.finished:
                continue
            # Frames of this chunk that are audio (an end-of-audio frame, if any, is cut).
            kept = max(0, min(chunk.count, len(seq.frames) - chunk.first[i]))
            pcm = np.ascontiguousarray(chunk.pcm[i, : kept * fs], dtype=np.float32)
            first = chunk.first[i]
            codes = np.stack(seq.frames[first : first + kept]) if kept else np.zeros((0, 32), np.int64)
            if kept and self._silent_tail(seq, chunk.rms[i, :kept]) and seq.finish_reason is None:
                seq.finish_reason = FinishReason.SILENCE
                del seq.frames[seq.decoded :]  # frames computed past the silent tail are dropped
            # The last chunk covers the stream's end (a chunk launched after it may still be
            # in flight when this one is handed over: the rest launched behind the last step).
            covers_end = first + chunk.count >= seq.decoded
            last = seq.finish_reason is not None and seq.undecoded() <= 0 and covers_end
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
                self._retire(seq, seq.finish_reason)  # type: ignore[arg-type]

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
        self._retire(seq, reason)

    def _silent_tail(self, seq: Sequence, rms: np.ndarray) -> bool:
        """Count the stream's trailing silent frames, given this chunk's frames' loudness."""
        if not self.silence.enabled:
            return False
        for value in rms.tolist():
            seq.silent_frames = seq.silent_frames + 1 if value < self.silence.rms else 0
        return seq.silent_frames >= self.silence.frames

    def _retire(self, seq: Sequence, reason: FinishReason) -> None:
        """Finish `seq`, free its slot and audio decoder state."""
        slot = seq.slot
        was_running = slot is not None and self.scheduler.running.get(slot) is seq
        self.scheduler.finish(seq, reason)
        if was_running:
            self.runner.release(slot)  # type: ignore[arg-type]

    def stats(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            **self.scheduler.counts(),
            "timings": dict(self.timings),
            "iteration_s": round(self.iteration_s(), 3),  # in the current iteration (0: between)
        }
