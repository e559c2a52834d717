"""The continuous-batching loop: requests join at frame boundaries, every live slot gets one frame
per decode step, audio chunks stream out, finished sequences leave.

Up to two decode steps are in flight, so the device does not sit idle while the host works: a step's
input (the previous frame's embeddings, positions, frame counters) lives on the device and is
advanced by the step itself, so step N+1 can be queued before the host has read step N's codes.
An iteration:
  1. drops cancelled sequences and admits waiting ones (their prefill is queued on the device);
  2. launches step N+1 (CUDA graphs on a GPU) for every sequence still generating; its codes are
     copied to a host buffer of its own behind it;
  3. waits for step N's codes and the audio decoded behind it, records each sequence's frame and its
     audio, and stops sequences that hit end of audio, their length or a silent tail;
  4. hands each stream its chunk once it holds enough audio (`ChunkPolicy`: a small first chunk,
     larger ones after it), then launches one audio decode of step N+1's frame for every sequence
     it computed a frame for, right behind that step on the runner's audio stream (steps and
     prefills run on a stream of higher priority), so it overlaps step N+2.
Every frame is thus decoded in the iteration that launched its step, in one launch for all streams:
a stream's first audio comes as early as it can, its end (and its slot) as soon as its last step,
and the device runs one decode an iteration, however many streams joined or ended, where decoding
whole chunks took a launch for each chunk size due (most of them for a handful of streams, each
costing about as much as a full batch's one frame). The chunk size only sets how often a stream's
audio is handed over (and crosses the serving layers), not how it is decoded.
End of audio is seen one step late: the frame step N+1 computed past it is discarded, its audio is
never decoded and the slot stops being stepped. Lengths are known on the host, so no step is
launched past one. A step's codes go to the sequences it was launched for, and only while they are
still generating: a sequence cancelled or silenced meanwhile, or admitted into a slot freed
meanwhile, gets nothing from it. A finished sequence leaves as its last chunk is handed over.

The loop runs on its own thread (`start`) or is driven by hand (`run_once`, for tests); sequences
arrive and get cancelled from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from serve_app.engine.launch_log import LaunchLog
from serve_app.engine.runner import ModelRunner, StepOutput
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


SLOW_ITERATION_S = 1.0
"""An iteration (milliseconds, normally) this slow is logged, with what was launched before it."""

LAUNCH_LOG = 24
"""Device launches remembered for that log line (a few iterations' worth)."""

StepObserver = Callable[[int, int], None]
"""Told `(batch_size, queue_depth)` after an iteration that changed either (e.g. metrics gauges)."""

DEFAULT_CHUNKS = ChunkPolicy()
MIN_HISTORY = 3
"""Frames the runner's history ring must hold (see `EngineLoop.__init__`)."""
DEFAULT_SILENCE_GUARD = SilenceGuard()


@dataclass
class _Step:
    """A launched decode step and the sequences it computes a frame for (as of its launch)."""

    seqs: list[Sequence]
    out: StepOutput


@dataclass
class _Decode:
    """The audio of one step's frame for each of `seqs` (frame `frames[i]` of `seqs[i]`), decoded
    behind that step."""

    seqs: list[Sequence]
    frames: list[int]
    pcm: Any = None  # device tensor (B, frame samples), then host array
    rms: Any = None  # each frame's loudness (B, 1): device tensor, then host array


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
        # A frame's ring entry is decoded behind its step; the next two steps (at most in flight
        # before the host collects that decode) write the two entries after it.
        if runner.history_len < MIN_HISTORY:
            raise ValueError(f"the history ring needs at least {MIN_HISTORY} frames")
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
        self._audio: _Decode | None = None  # launched behind the uncollected step, collected with it
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
        self._step, self._audio = None, None
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
        if done is not None:
            self._deliver(done)
        self._audio = self._launch_decode(launched)
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
        with self.launches.launch(self.steps, form, rows, positions, stream=stream):
            out = self.runner.step(rows, positions)
        self.steps += 1
        for seq in seqs:
            seq.steps += 1
            if seq.steps >= seq.max_frames:
                self.runner.deactivate(seq.slot)  # type: ignore[arg-type]
        return _Step(seqs, out)

    def _collect(self, step: _Step | None) -> _Decode | None:
        """Wait for `step` (not the steps after it) and the audio decoded behind it; record the
        step's frames; return the decoded audio."""
        decode, self._audio = self._audio, None
        if step is None and decode is None:
            return None
        codes, host = self.runner.fetch(
            step.out if step else None, [decode.pcm, decode.rms] if decode else []
        )
        if step is not None and codes is not None:
            eos = (codes == self.eos_id).all(axis=1)
            for seq in step.seqs:
                # A sequence that ended since the launch (end of audio seen in the step before,
                # silence, cancel) gets nothing: this frame is past its end.
                if seq.finish_reason is None:
                    self._take_frame(seq, codes[seq.slot], bool(eos[seq.slot]))
        if decode is not None:
            decode.pcm, decode.rms = host
        return decode

    def _admit(self) -> None:
        joined = self.scheduler.admit()
        if not joined:
            return
        lengths = [s.prompt_len for s in joined]
        try:
            form, stream = "prefill {} prompts of {} rows", self.runner.step_stream
            with self.launches.launch(self.steps, form, len(joined), lengths, stream=stream):
                self.runner.start(joined)
            admitted = time.perf_counter()  # their first step is launched next, in this iteration
            for seq in joined:
                seq.admitted_at = admitted
        except Exception as exc:  # e.g. out of memory on an unusually long prompt: fail these only
            logger.exception("prefill failed for %d requests", len(joined))
            for seq in joined:
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

    def _launch_decode(self, step: _Step | None) -> _Decode | None:
        """Decode the frame `step` computes for each of its sequences still generating, in one
        launch queued behind the step on the audio stream."""
        if step is None:
            return None
        seqs = [s for s in step.seqs if s.finish_reason is None and not s.finished]
        if not seqs:
            return None
        frames = [s.steps - 1 for s in seqs]  # the frame this step computes: the ring's entry
        slots = [s.slot for s in seqs]
        with self.launches.launch(
            self.steps, "audio {} streams", len(slots), stream=self.runner.audio_stream
        ):
            pcm, rms = self.runner.decode_audio(slots, frames, after=step.out)  # type: ignore[arg-type]
        return _Decode(seqs, frames, pcm, rms)

    def _deliver(self, decode: _Decode) -> None:
        """Add each sequence's decoded frame to its unsent audio (an end-of-audio frame's is cut),
        watch for a silent tail, and hand over a chunk when the stream holds enough audio or ended."""
        for i, seq in enumerate(decode.seqs):
            if seq.finished:
                continue
            if decode.frames[i] < len(seq.frames):  # kept: not the end-of-audio frame
                seq.unsent.append(decode.pcm[i])
                if self._silent_tail(seq, float(decode.rms[i, 0])) and seq.finish_reason is None:
                    seq.finish_reason = FinishReason.SILENCE
            ended = seq.finish_reason is not None
            if ended or len(seq.unsent) >= self.chunks.target(seq.chunks_sent):
                self._send(seq, last=ended)

    def _send(self, seq: Sequence, last: bool) -> None:
        """Hand `seq` its unsent audio (and those frames' codes) as one chunk; the last one retires it."""
        n, first = len(seq.unsent), seq.sent_frames
        pcm = np.concatenate(seq.unsent) if n else np.zeros(0, np.float32)
        codes = np.stack(seq.frames[first : first + n]) if n else np.zeros((0, 32), np.int64)
        seq.unsent, seq.sent_frames = [], first + n
        reason = (seq.finish_reason or FinishReason.LENGTH) if last else None
        seq.emit(
            AudioChunk(
                pcm=pcm,
                codes=codes.astype(np.int64),
                frames=n,
                is_last=last,
                finish_reason=reason,
                dropped_context_turns=seq.dropped_context_turns,
            )
        )
        if last:
            self._retire(seq, reason)  # type: ignore[arg-type]

    def _silent_tail(self, seq: Sequence, rms: float) -> bool:
        """Count the stream's trailing silent frames, given its newest frame's loudness."""
        if not self.silence.enabled:
            return False
        seq.silent_frames = seq.silent_frames + 1 if rms < self.silence.rms else 0
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
