"""What the engine loop last queued on the device, and how long the device took for each.

An iteration normally takes milliseconds; when one takes seconds, its wait covers work queued by
the iterations before it too. The log keeps the last launches (prefills, steps, audio decodes), each
bracketed by two timing events on its stream when on a GPU, so the slow iteration's log line says
which launch the device spent the time on, at the cost of two event records per launch. A launch's
time runs from when its stream reached it to when the stream finished it, so an audio decode that
waits for the step completing its frames includes that wait.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class _Launch:
    step: int  # loop steps launched before it
    form: str
    values: tuple[Any, ...]
    began: torch.cuda.Event | None
    ended: torch.cuda.Event | None

    def describe(self) -> str:
        text = f"#{self.step} " + self.form.format(*self.values)
        if self.began is None or self.ended is None:
            return text
        if not (self.began.query() and self.ended.query()):
            return text + " [device: not done]"
        return text + f" [device {self.began.elapsed_time(self.ended):.1f} ms]"


class LaunchLog:
    """The last `size` launches; `timed`: bracket each with CUDA timing events (on a GPU)."""

    def __init__(self, size: int, timed: bool) -> None:
        self.timed = timed
        self._entries: deque[_Launch] = deque(maxlen=size)

    def _record(self, stream: torch.cuda.Stream | None) -> torch.cuda.Event | None:
        if not self.timed:
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    @contextlib.contextmanager
    def launch(
        self, step: int, form: str, *values: Any, stream: torch.cuda.Stream | None = None
    ) -> Iterator[None]:
        """Remember the launches made inside the block (on `stream`, default the current one) as
        `form.format(*values)`; the values are formatted only when a line is written."""
        began = self._record(stream)
        yield
        self._entries.append(_Launch(step, form, values, began, self._record(stream)))

    def describe(self) -> str:
        """The launches, oldest first, with each one's device time where it has finished."""
        return "; ".join(entry.describe() for entry in self._entries)

    def __len__(self) -> int:
        return len(self._entries)
