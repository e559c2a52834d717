"""Admission and slot bookkeeping for continuous batching.

Requests wait in a bounded queue (beyond it: `EngineOverloadedError`, a 503 for the API), join
the running batch at a frame boundary when a KV slot is free, and leave it on end of audio, length,
silence or cancellation. Free slots are handed out lowest first, so the live slots stay packed at
the bottom and the decode step's batch (rows 0..max slot) stays small.

The queue is first come, first served among one caller's requests (`GenerationRequest.caller`: the
API key, or the client's address). Where several callers wait, a free slot goes to the caller with
the fewest streams running, ties to the one served least recently, so a caller with hundreds of
requests queued cannot hold back another's one: callers take turns, and each caller's first audio
waits on its own share of the queue, not on the whole of it. The queue's bound is one for all
callers, though: a caller that fills it makes the others' new requests 503s until it drains (what
bounds one caller is the API's per-key rate limit).

Thread-safe: requests arrive from event-loop or caller threads, the engine loop schedules.
"""

from __future__ import annotations

import heapq
import threading
from collections import Counter, deque

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
        self._waiting_by_caller: Counter[str | None] = Counter()
        self._running_by_caller: Counter[str | None] = Counter()
        self._served: dict[str | None, int] = {}  # each present caller's last admission (`_admissions`)
        self._admissions = 0
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
            self._waiting_by_caller[seq.request.caller] += 1
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
        """Move waiting sequences into free slots within the prefill row budget: each caller's in
        arrival order, the callers by fewest running (`_next_locked`).

        The first sequence chosen is always admitted when a slot is free, however long its prompt."""
        admitted: list[Sequence] = []
        with self._lock:
            while self.waiting and self._free:
                seq = self._next_locked()
                if seq.cancelled:
                    self._leave_waiting_locked(seq)
                    self._finish_locked(seq, FinishReason.CANCELLED)
                    continue
                longest = max([s.prompt_len for s in admitted] + [seq.prompt_len])
                if admitted and longest * (len(admitted) + 1) > self.max_prefill_rows:
                    break
                self._leave_waiting_locked(seq)
                seq.slot = heapq.heappop(self._free)
                seq.status = SequenceStatus.RUNNING
                self.running[seq.slot] = seq
                self._running_by_caller[seq.request.caller] += 1
                self._admissions += 1
                self._served[seq.request.caller] = self._admissions
                admitted.append(seq)
        return admitted

    def _next_locked(self) -> Sequence:
        """The waiting sequence a free slot goes to: the oldest, where one caller waits; else the
        oldest of the caller with the fewest streams running, ties to the caller served least
        recently (one not served while present first)."""
        if len(self._waiting_by_caller) == 1:
            return self.waiting[0]
        best, best_key = self.waiting[0], (1 << 62, 1 << 62)
        seen: set[str | None] = set()
        for seq in self.waiting:
            caller = seq.request.caller
            if caller in seen:
                continue
            seen.add(caller)
            key = (self._running_by_caller[caller], self._served.get(caller, -1))
            if key < best_key:
                best, best_key = seq, key
                if key == (0, -1):  # nothing can come before it
                    break
            if len(seen) == len(self._waiting_by_caller):
                break
        return best

    def _leave_waiting_locked(self, seq: Sequence) -> None:
        if self.waiting[0] is seq:
            self.waiting.popleft()
        else:
            self.waiting.remove(seq)
        self._count_out_locked(self._waiting_by_caller, seq.request.caller)

    def _count_out_locked(self, counts: Counter[str | None], caller: str | None) -> None:
        """One of `caller`'s sequences left `counts` (waiting or running); a caller with nothing
        waiting or running is forgotten, so what is kept per caller stays as small as the callers
        present."""
        counts[caller] -= 1
        if counts[caller] <= 0:
            del counts[caller]
            if caller not in self._waiting_by_caller and caller not in self._running_by_caller:
                self._served.pop(caller, None)

    def cancelled(self) -> list[Sequence]:
        """Remove and return cancelled sequences (running ones keep their slot until `finish`)."""
        with self._lock:
            out = [s for s in self.running.values() if s.cancelled]
            dropped = [s for s in self.waiting if s.cancelled]
            for seq in dropped:
                self._leave_waiting_locked(seq)
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
            self._count_out_locked(self._running_by_caller, seq.request.caller)
        seq.status = SequenceStatus.FINISHED

    def drain(self) -> list[Sequence]:
        """Finish (as cancelled) and return every running and waiting sequence, and refuse any
        added after: the loop has stopped (closed or failed), so a later one would wait for ever."""
        with self._lock:
            self._closed = True
            out = list(self.running.values()) + list(self.waiting)
            self.waiting.clear()
            self._waiting_by_caller.clear()
            self._served.clear()
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
