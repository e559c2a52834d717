"""`MimiStreamDecoder` replayed from CUDA graphs.

An eager streaming decode launches a few hundred small kernels (32 codebook lookups, 8 transformer
layers, the SEANet stack), so on a GPU a call costs about the same ~13 ms whether it decodes one frame
of one stream or four frames of sixteen: it is launch-bound. Its shapes depend only on (batch, frames)
and it never syncs with the host, so each shape is captured once and replayed.

To keep the number of graphs small, a batch is padded up to a bucket size (1, 2, 4, 8, ...). Padding
rows decode into a scratch slot that no stream owns; they cost a little compute and change nothing
else. Without CUDA (or with `use_graphs=False`) the same padded decode runs eagerly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import MimiModel

from serve_app.model.mimi_stream import MimiStreamDecoder


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    codes: torch.Tensor  # static input (bucket, K, n)
    slots: torch.Tensor  # static input (bucket,)
    pcm: torch.Tensor  # static output (bucket, n * frame_samples)


def default_buckets(max_streams: int) -> list[int]:
    """Powers of two below `max_streams`, then `max_streams` itself."""
    buckets, size = [], 1
    while size < max_streams:
        buckets.append(size)
        size *= 2
    return buckets + [max_streams]


class GraphedMimiStreamDecoder:
    """Same API and output as `MimiStreamDecoder`, with per-(bucket, frames) CUDA graphs.

    Graphs are captured lazily on the first call of each shape (or ahead of time with `warmup`).
    Each holds its own activation memory, so capture only the frame counts the engine uses.
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
        self.buckets = sorted(set(buckets or default_buckets(max_streams)))
        if self.buckets[0] < 1 or self.buckets[-1] != max_streams:
            raise ValueError("buckets must be >= 1 and end at max_streams")
        self.device = self.decoder.device
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        if self.use_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need the Mimi model on a CUDA device")
        self.frame_samples = self.decoder.frame_samples
        self._graphs: dict[tuple[int, int], _Captured] = {}

    @property
    def free_slots(self) -> list[int]:
        return [slot for slot in self.decoder.free_slots if slot != self.scratch]

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
                    self._graph(bucket, n)

    def decode(self, codes: torch.Tensor, slots: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """See `MimiStreamDecoder.decode`; `slots` is best given as a CPU tensor (no device sync)."""
        batch, _, frames = codes.shape
        slot_list = [int(s) for s in slots.tolist()]
        if batch > self.max_streams or any(s == self.scratch for s in slot_list):
            raise ValueError(f"at most {self.max_streams} streams, in slots [0, {self.max_streams})")
        if check:
            self.decoder.validate(codes, torch.tensor(slot_list))
        bucket = next(size for size in self.buckets if size >= batch)
        padded = torch.tensor(slot_list + [self.scratch] * (bucket - batch), dtype=torch.long)
        if not self.use_graphs:
            fill = codes.new_zeros(bucket - batch, *codes.shape[1:])
            return self.decoder.decode(torch.cat([codes, fill]), padded, check=False)[:batch]
        captured = self._graph(bucket, frames)
        captured.codes[:batch].copy_(codes)
        captured.slots.copy_(padded.pin_memory(), non_blocking=True)  # pageable would sync
        captured.graph.replay()
        return captured.pcm[:batch].clone()

    def _graph(self, bucket: int, frames: int) -> _Captured:
        key = (bucket, frames)
        if key not in self._graphs:
            self._graphs[key] = self._capture(bucket, frames)
        return self._graphs[key]

    def _capture(self, bucket: int, frames: int) -> _Captured:
        shape = (bucket, self.decoder.num_codebooks, frames)
        codes = torch.zeros(shape, dtype=torch.long, device=self.device)
        slots = torch.full((bucket,), self.scratch, dtype=torch.long, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up outside the graph, into the scratch slot only
            for _ in range(2):
                self.decoder.decode(codes, slots, check=False)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            pcm = self.decoder.decode(codes, slots, check=False)
        return _Captured(graph, codes, slots, pcm)

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.max_streams:
            raise ValueError(f"slot {slot} out of range [0, {self.max_streams})")
