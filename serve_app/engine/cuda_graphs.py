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
import math
import weakref
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from transformers import MimiModel

from serve_app.model.mimi_stream import MimiStreamDecoder

T = TypeVar("T")
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
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


def frame_rms(pcm: torch.Tensor, frames: int) -> torch.Tensor:
    """Root mean square of each of a (B, frames * samples) batch's frames: (B, frames) float32."""
    return torch.linalg.vector_norm(pcm.view(pcm.shape[0], frames, -1), dim=-1) / math.sqrt(
        pcm.shape[-1] // frames
    )


def split_ring_decode(samples: ArrayT, frames: int) -> tuple[ArrayT, ArrayT]:
    """`decode_ring`'s output (B, frames * frame samples + frames) → its pcm (B, frames * frame
    samples) and each frame's RMS (B, frames), as views."""
    cut = samples.shape[1] - frames
    return samples[:, :cut], samples[:, cut:]


class HostStaging:
    """Pinned host buffers for small host-to-device copies that must not wait for the device, reused
    without a torch call: `take` hands out the next of `entries` buffers, and a buffer is handed out
    again only after the caller's `done` says every copy queued so far has completed. Past `entries`
    takes between two `done`s, each take pins a buffer of its own (the caching host allocator's
    call, which is what every copy paid before)."""

    def __init__(self, entries: int, size: int, pinned: bool) -> None:
        self._pinned = pinned
        self._buffers = torch.zeros(entries, size, dtype=torch.long, pin_memory=pinned)
        self._views: dict[tuple[int, tuple[int, ...]], tuple[np.ndarray, torch.Tensor]] = {}
        self._taken = 0

    def take(self, *shape: int) -> tuple[np.ndarray, torch.Tensor]:
        """A free int64 host buffer of `shape`, as a numpy array to fill and the tensor to copy from
        (the same memory; its contents are stale: write all of it)."""
        entries, size = self._buffers.shape
        if self._taken >= entries or math.prod(shape) > size:
            fresh = torch.empty(shape, dtype=torch.long, pin_memory=self._pinned)
            return fresh.numpy(), fresh
        key = (self._taken, shape)
        self._taken += 1
        view = self._views.get(key)
        if view is None:
            tensor = self._buffers[key[0], : math.prod(shape)].view(shape)
            view = self._views[key] = (tensor.numpy(), tensor)
        return view

    def done(self) -> None:
        """Every copy queued from a taken buffer has completed: all of them are free again."""
        self._taken = 0


INDEX_STAGING_ENTRIES = 16
"""Pinned index buffers of a ring decoder: the chunk decodes an engine launches between two fetches
(a few an iteration) take one each."""


@dataclass
class _MimiShape:
    """Static inputs and outputs of one captured (bucket, frames) decode: `codes` and `slots` for
    `decode`; for `decode_ring`, `index` alone, and its output holds each frame's RMS after the pcm."""

    codes: torch.Tensor  # (bucket, K, frames)
    slots: torch.Tensor  # (bucket,)
    out: torch.Tensor  # (bucket, frames * frame_samples), for `decode_ring` (..., + frames)
    index: torch.Tensor | None = None  # (3, bucket): ring rows, decoder slots, first frames


class GraphedMimiStreamDecoder:
    """`MimiStreamDecoder` (same API and output) over batches padded to buckets, replayed from a CUDA
    graph per (bucket, frames) on CUDA.

    An eager streaming decode launches a few hundred small kernels (32 codebook lookups, 8 transformer
    layers, the SEANet stack), so a call costs about the same whether it decodes one frame of one
    stream or four frames of sixteen. Padding rows decode into a scratch slot that no stream owns.
    Graphs are captured on the first call of each shape (or ahead of time with `warmup`); each holds
    its own activation memory, so capture only the frame counts the engine uses. Without CUDA (or with
    `use_graphs=False`) the same padded decode runs eagerly.

    With a `ring` of codes (slots, R, K), `decode_ring` reads each stream's frames from it inside the
    graph and also returns each frame's loudness, both in one tensor that it copies to the host: the
    caller hands over three integers a stream in one copy and gets the audio back in one. An engine's
    loop thread calls it for every chunk, and under a busy event loop each torch call it makes may
    wait to retake the GIL, so the fewer calls the better: a call is a handful, where gathering the
    codes on the host side took some twenty (and a clone of each output and its own copy to the
    host four more).
    """

    def __init__(
        self,
        mimi: MimiModel,
        max_streams: int,
        buckets: Sequence[int] | None = None,
        use_graphs: bool | None = None,
        ring: torch.Tensor | None = None,
    ):
        self.max_streams = max_streams
        self.ring = ring
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
        # decode_ring's (3, bucket) index: ring rows, decoder slots, first frames.
        self._index_staging = HostStaging(
            INDEX_STAGING_ENTRIES, 3 * self.buckets[-1], pinned=self.device.type == "cuda"
        )
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
        """Capture the graphs of every bucket for each chunk length in `frames` now (`decode_ring`'s
        when there is a ring, else `decode`'s)."""
        if self.use_graphs:
            for n in frames:
                for bucket in self.buckets:
                    self._shape(bucket, n)

    def decode_ring(self, slots: Sequence[int], first_frames: Sequence[int], frames: int) -> torch.Tensor:
        """Decode ring frames first..first+frames-1 (modulo the ring's length) of each of `slots`,
        streams in the ring's and the decoder's slot of that number, into one float32 host tensor
        (B, frames * frame samples + frames): the pcm, then each frame's RMS (`split_ring_decode`).
        On CUDA it is a pinned copy queued on the current stream: read it once that stream has been
        synchronized, and then say so (`decodes_done`), which frees the pinned index buffers."""
        ring = self.ring
        if ring is None:
            raise RuntimeError("this decoder has no ring of codes: use decode")
        batch = len(slots)
        if batch > self.max_streams or any(not 0 <= s < self.max_streams for s in slots):
            raise ValueError(f"at most {self.max_streams} streams, in slots [0, {self.max_streams})")
        if frames > ring.shape[1]:
            raise ValueError(f"cannot decode {frames} frames at once (the ring holds {ring.shape[1]})")
        bucket = smallest_bucket(self.buckets, batch)
        index, host = self._index_staging.take(3, bucket)  # pinned: a pageable copy would sync
        index[:, batch:] = 0  # padding: ring row 0 into the scratch slot
        index[0, :batch] = slots
        index[1, :batch] = slots
        index[1, batch:] = self.scratch
        index[2, :batch] = first_frames
        if not self.use_graphs:  # queued, as the graphs' copy: no host wait
            return self._decode_ring(host.to(self.device, non_blocking=True), frames)[:batch].to("cpu", non_blocking=True)
        shape = self._shape(bucket, frames)
        shape.index.copy_(host, non_blocking=True)  # type: ignore[union-attr]
        self._graphs.replay((bucket, frames))  # type: ignore[union-attr]
        # Queued before any later replay can overwrite the graph's output: no clone needed.
        return shape.out[:batch].to("cpu", non_blocking=True)

    def decodes_done(self) -> None:
        """Every `decode_ring` queued so far has completed (its stream was synchronized)."""
        self._index_staging.done()

    def _decode_ring(self, index: torch.Tensor, frames: int) -> torch.Tensor:
        ring: torch.Tensor = self.ring  # type: ignore[assignment]
        offsets = torch.arange(frames, device=index.device)
        at = (index[2][:, None] + offsets) % ring.shape[1]
        codes = ring[index[0][:, None], at].transpose(1, 2).contiguous()  # (bucket, K, frames)
        pcm = self.decoder.decode(codes, index[1], check=False)
        return torch.cat([pcm, frame_rms(pcm, frames)], dim=1)

    def decode(self, codes: torch.Tensor, slots: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """See `MimiStreamDecoder.decode`; `slots` is best given as a CPU tensor (no device sync)."""
        batch, _, frames = codes.shape
        slot_list = [int(s) for s in slots.tolist()]
        if batch > self.max_streams or any(s == self.scratch for s in slot_list):
            raise ValueError(f"at most {self.max_streams} streams, in slots [0, {self.max_streams})")
        if self.use_graphs and self.ring is not None:
            raise RuntimeError("this decoder's graphs read their codes from its ring: use decode_ring")
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
        return shape.out[:batch].clone()

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
        if self.ring is not None:
            index = torch.zeros((3, bucket), dtype=torch.long, device=self.device)
            index[1] = self.scratch

            def decode_ring() -> torch.Tensor:
                return self._decode_ring(index, frames)

            with graphs.warming_up():  # into the scratch slot only
                for _ in range(2):
                    decode_ring()
            return _MimiShape(codes, slots, graphs.capture((bucket, frames), decode_ring), index)

        def decode() -> torch.Tensor:
            return self.decoder.decode(codes, slots, check=False)

        with graphs.warming_up():  # into the scratch slot only
            for _ in range(2):
                decode()
        return _MimiShape(codes, slots, graphs.capture((bucket, frames), decode))

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.max_streams:
            raise ValueError(f"slot {slot} out of range [0, {self.max_streams})")
