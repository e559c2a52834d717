"""CUDA-graph capture, in one place: shape buckets, capture after a warm-up, replay.

A decode step or a streaming Mimi decode launches hundreds of small kernels, so on a GPU it is
launch-bound: each static shape is captured once as a CUDA graph and replayed. To keep the number of
graphs small, work is padded up to a bucket (1, 2, 4, 8, ... for batches); padding rows run in slots
that no request owns. The engine's decode step (`ModelRunner`) and the streaming Mimi decoder
(`GraphedMimiStreamDecoder`, below) both capture through `CudaGraphs`.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from transformers import MimiModel

from serve_app.model.mimi_stream import MimiStreamDecoder

T = TypeVar("T")
logger = logging.getLogger(__name__)


def buckets_up_to(n: int) -> tuple[int, ...]:
    """Powers of two below n, then n itself: (1, 2, 4, 6) for 6."""
    buckets, size = [], 1
    while size < n:
        buckets.append(size)
        size *= 2
    return (*buckets, max(n, 1))


def smallest_bucket(buckets: Sequence[int], n: int) -> int:
    """The smallest of the ascending `buckets` that holds n."""
    for size in buckets:
        if size >= n:
            return size
    raise ValueError(f"{n} is beyond the largest bucket ({buckets[-1]})")


_HELD_STREAMS: Counter[int] = Counter()
"""Live `CudaGraphs` sets capturing on each CUDA stream."""


def _dedicated_stream(device: torch.device) -> torch.cuda.Stream:
    """A stream that no other live `CudaGraphs` set captures on, held until the set is gone.
    `torch.cuda.Stream()` hands out PyTorch's pooled streams round-robin (32 per device and
    priority), so two calls can return the same CUDA stream."""
    for _ in range(64):
        stream = torch.cuda.Stream(device)
        if not _HELD_STREAMS[stream.cuda_stream]:
            break
    else:
        # Only sets replayed side by side must differ; a process with this many sets is not an engine's.
        logger.warning("every pooled CUDA stream already captures for a live set of graphs: sharing one")
    _HELD_STREAMS[stream.cuda_stream] += 1
    return stream


def _release_stream(handle: int) -> None:
    _HELD_STREAMS[handle] -= 1
    if _HELD_STREAMS[handle] <= 0:
        del _HELD_STREAMS[handle]


class CudaGraphs:
    """CUDA graphs keyed by their static shapes. `shared_pool`: all graphs share one memory pool
    (for graphs replayed one after another on one stream, like a decode step's two halves).

    A set's graphs may replay alongside another set's on another stream (the decode step's and the
    audio decoder's), so each set captures on a capture stream of its own: PyTorch keys the cuBLAS
    workspace by (handle, stream), and a graph keeps the workspace address it was captured with.
    Graphs captured on one shared stream and replayed concurrently would share that scratch
    memory, split-K partial sums and semaphores included: measured on an H200 behind Ray, one
    audio decode and the step beside it spun for 61 s at 100 % GPU."""

    def __init__(self, device: torch.device, shared_pool: bool = False) -> None:
        self.device = device
        self.pool = torch.cuda.graph_pool_handle() if shared_pool else None
        self.capture_stream = _dedicated_stream(device)
        weakref.finalize(self, _release_stream, self.capture_stream.cuda_stream)
        self._graphs: dict[Hashable, torch.cuda.CUDAGraph] = {}

    @contextlib.contextmanager
    def warming_up(self) -> Iterator[None]:
        """Run warm-ups (compilation, cuBLAS and allocator set-up) on a side stream, as capture needs."""
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        try:
            with torch.cuda.stream(side):
                yield
        finally:
            current.wait_stream(side)

    def capture(self, key: Hashable, fn: Callable[[], T]) -> T:
        """Capture `fn()` as the graph `key`; returns its (static) outputs, rewritten by each replay."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.capture_stream):
            out = fn()
        self._graphs[key] = graph
        return out

    def replay(self, key: Hashable) -> None:
        self._graphs[key].replay()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._graphs

    def __len__(self) -> int:
        return len(self._graphs)

    def keys(self) -> list[Hashable]:
        return list(self._graphs)


@dataclass
class _MimiShape:
    """Static inputs and output of one captured (bucket, frames) decode."""

    codes: torch.Tensor  # (bucket, K, frames)
    slots: torch.Tensor  # (bucket,)
    pcm: torch.Tensor  # (bucket, frames * frame_samples)


class GraphedMimiStreamDecoder:
    """`MimiStreamDecoder` (same API and output) over batches padded to buckets, replayed from a CUDA
    graph per (bucket, frames) on CUDA.

    An eager streaming decode launches a few hundred small kernels (32 codebook lookups, 8 transformer
    layers, the SEANet stack), so a call costs about the same whether it decodes one frame of one
    stream or four frames of sixteen. Padding rows decode into a scratch slot that no stream owns.
    Graphs are captured on the first call of each shape (or ahead of time with `warmup`); each holds
    its own activation memory, so capture only the frame counts the engine uses. Without CUDA (or with
    `use_graphs=False`) the same padded decode runs eagerly.
    """

    def __init__(
        self,
        mimi: MimiModel,
        max_streams: int,
        buckets: Sequence[int] | None = None,
        use_graphs: bool | None = None,
    ):
        self.max_streams = max_streams
        self.decoder = MimiStreamDecoder(mimi, max_streams + 1)
        self.scratch = max_streams
        self.decoder.reset(self.scratch)
        self.buckets = sorted(set(buckets or buckets_up_to(max_streams)))
        if self.buckets[0] < 1 or self.buckets[-1] != max_streams:
            raise ValueError("buckets must be >= 1 and end at max_streams")
        self.device = self.decoder.device
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        if self.use_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need the Mimi model on a CUDA device")
        self.frame_samples = self.decoder.frame_samples
        self._graphs = CudaGraphs(self.device) if self.use_graphs else None
        self._shapes: dict[tuple[int, int], _MimiShape] = {}

    @property
    def free_slots(self) -> list[int]:
        return [slot for slot in self.decoder.free_slots if slot != self.scratch]

    @property
    def captured(self) -> list[tuple[int, int]]:
        """(bucket, frames) of the graphs captured so far."""
        return list(self._shapes)

    def acquire(self) -> int:
        free = self.free_slots
        if not free:
            raise RuntimeError(f"all {self.max_streams} Mimi stream slots are in use")
        self.reset(free[0])
        return free[0]

    def reset(self, *slots: int) -> None:
        for slot in slots:
            self._check_slot(slot)
        self.decoder.reset(*slots)

    def free(self, slot: int) -> None:
        self._check_slot(slot)
        self.decoder.free(slot)

    def warmup(self, frames: Sequence[int]) -> None:
        """Capture the graphs of every bucket for each chunk length in `frames` now."""
        if self.use_graphs:
            for n in frames:
                for bucket in self.buckets:
                    self._shape(bucket, n)

    def decode(self, codes: torch.Tensor, slots: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """See `MimiStreamDecoder.decode`; `slots` is best given as a CPU tensor (no device sync)."""
        batch, _, frames = codes.shape
        slot_list = [int(s) for s in slots.tolist()]
        if batch > self.max_streams or any(s == self.scratch for s in slot_list):
            raise ValueError(f"at most {self.max_streams} streams, in slots [0, {self.max_streams})")
        if check:
            self.decoder.validate(codes, torch.tensor(slot_list))
        bucket = smallest_bucket(self.buckets, batch)
        padded = torch.tensor(slot_list + [self.scratch] * (bucket - batch), dtype=torch.long)
        if not self.use_graphs:
            fill = codes.new_zeros(bucket - batch, *codes.shape[1:])
            return self.decoder.decode(torch.cat([codes, fill]), padded, check=False)[:batch]
        shape = self._shape(bucket, frames)
        shape.codes[:batch].copy_(codes)
        shape.slots.copy_(padded.pin_memory(), non_blocking=True)  # pageable would sync
        self._graphs.replay((bucket, frames))  # type: ignore[union-attr]
        return shape.pcm[:batch].clone()

    def _shape(self, bucket: int, frames: int) -> _MimiShape:
        key = (bucket, frames)
        if key not in self._shapes:
            self._shapes[key] = self._capture(bucket, frames)
        return self._shapes[key]

    def _capture(self, bucket: int, frames: int) -> _MimiShape:
        graphs: CudaGraphs = self._graphs  # type: ignore[assignment]
        codes = torch.zeros(
            (bucket, self.decoder.num_codebooks, frames), dtype=torch.long, device=self.device
        )
        slots = torch.full((bucket,), self.scratch, dtype=torch.long, device=self.device)

        def decode() -> torch.Tensor:
            return self.decoder.decode(codes, slots, check=False)

        with graphs.warming_up():  # into the scratch slot only
            for _ in range(2):
                decode()
        return _MimiShape(codes, slots, graphs.capture((bucket, frames), decode))

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.max_streams:
            raise ValueError(f"slot {slot} out of range [0, {self.max_streams})")
