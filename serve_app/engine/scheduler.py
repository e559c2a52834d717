"""Admission and slot bookkeeping for continuous batching.

Requests wait in a bounded FIFO queue (beyond it: `EngineOverloadedError`, a 503 for the API),
join the running batch at a frame boundary when a KV slot is free, and leave it on end of audio,
length, silence or cancellation. Free slots are handed out lowest first, so the live slots stay
packed at the bottom and the decode step's batch (rows 0..max slot) stays small.

Thread-safe: requests arrive from event-loop or caller threads, the engine loop schedules.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque

from serve_app.engine.sequence import Sequence, SequenceStatus
from serve_app.engine.types import EngineOverloadedError, FinishReason


class Scheduler:
    def __init__(self, n_slots: int, max_waiting: int = 256, max_prefill_rows: int = 8192) -> None:
        if n_slots < 1:
            raise ValueError("n_slots must be >= 1")
        if max_waiting < 0:
            raise ValueError("max_waiting must be >= 0")
        self.n_slots = n_slots
        self.max_waiting = max_waiting
        self.max_prefill_rows = max_prefill_rows
        self.waiting: deque[Sequence] = deque()
        self.running: dict[int, Sequence] = {}
        self._free = list(range(n_slots))
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._closed = False  # drained: the loop has stopped, nothing is scheduled any more

    # ---- from any thread -----------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        """Queue a sequence; raises `EngineOverloadedError` when more than `max_waiting` requests
        would wait beyond the free slots; RuntimeError once drained (nothing would ever run it)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("engine loop stopped (engine closed or loop failed)")
            limit = self.max_waiting + len(self._free)
            if len(self.waiting) >= limit:
                raise EngineOverloadedError(
                    f"engine busy: {len(self.running)} streams running and {len(self.waiting)} waiting "
                    f"(at most {limit} may wait: {len(self._free)} for the free slots, {self.max_waiting} "
                    "beyond them); retry later"
                )
            self.waiting.append(seq)
            self._wakeup.notify_all()

    def notify(self) -> None:
        """Wake an idle loop (e.g. after a cancellation)."""
        with self._lock:
            self._wakeup.notify_all()

    def wait_for_work(self, timeout: float | None = None) -> bool:
        """Block until something is waiting or running (or `timeout`); True if there is work."""
        with self._lock:
            if not self.waiting and not self.running:
                self._wakeup.wait(timeout)
            return bool(self.waiting or self.running)

    # ---- engine loop ---------------------------------------------------------------------------
    def admit(self) -> list[Sequence]:
        """Move waiting sequences into free slots (FIFO) within the prefill row budget.

        The first waiting sequence is always admitted when a slot is free, however long its prompt."""
        admitted: list[Sequence] = []
        with self._lock:
            while self.waiting and self._free:
                seq = self.waiting[0]
                if seq.cancelled:
                    self.waiting.popleft()
                    self._finish_locked(seq, FinishReason.CANCELLED)
                    continue
                longest = max([s.prompt_len for s in admitted] + [seq.prompt_len])
                if admitted and longest * (len(admitted) + 1) > self.max_prefill_rows:
                    break
                self.waiting.popleft()
                seq.slot = heapq.heappop(self._free)
                seq.status = SequenceStatus.RUNNING
                self.running[seq.slot] = seq
                admitted.append(seq)
        return admitted

    def cancelled(self) -> list[Sequence]:
        """Remove and return cancelled sequences (running ones keep their slot until `finish`)."""
        with self._lock:
            out = [s for s in self.running.values() if s.cancelled]
            dropped = [s for s in self.waiting if s.cancelled]
            for seq in dropped:
                self.waiting.remove(seq)
                self._finish_locked(seq, FinishReason.CANCELLED)
            return out + dropped

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End a sequence and free its slot (idempotent)."""
        with self._lock:
            self._finish_locked(seq, reason)

    def _finish_locked(self, seq: Sequence, reason: FinishReason) -> None:
        if seq.status is SequenceStatus.FINISHED:
            return
        if seq.finish_reason is None:
            seq.finish_reason = reason
        if seq.slot is not None and self.running.get(seq.slot) is seq:
            del self.running[seq.slot]
            heapq.heappush(self._free, seq.slot)
        seq.status = SequenceStatus.FINISHED

    def drain(self) -> list[Sequence]:
        """Finish (as cancelled) and return every running and waiting sequence, and refuse any
        added after: the loop has stopped (closed or failed), so a later one would wait for ever."""
        with self._lock:
            self._closed = True
            out = list(self.running.values()) + list(self.waiting)
            self.waiting.clear()
            for seq in out:
                self._finish_locked(seq, FinishReason.CANCELLED)
            return out

    def batch_rows(self) -> int:
        """Rows the decode step must cover: 1 + the highest running slot (0 when idle)."""
        with self._lock:
            return max(self.running) + 1 if self.running else 0

    @property
    def free_slots(self) -> int:
        with self._lock:
            return len(self._free)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"running": len(self.running), "waiting": len(self.waiting), "slots": self.n_slots}
