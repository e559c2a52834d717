"""Sets of CUDA graphs replayed side by side on two streams (the decode step's and the audio
decoder's) must not share the scratch memory their cuBLAS calls were captured with."""

from __future__ import annotations

import gc

import pytest
import torch

from serve_app.engine.cuda_graphs import CudaGraphs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_each_live_set_captures_on_a_stream_of_its_own() -> None:
    device = torch.device("cuda")
    first = [CudaGraphs(device) for _ in range(8)]
    for _ in range(24):  # PyTorch's pool of 32 streams comes round to the first sets' streams again
        torch.cuda.Stream(device)
    later = [CudaGraphs(device) for _ in range(8)]
    assert len({s.capture_stream.cuda_stream for s in first + later}) == 16
    released = later.pop().capture_stream.cuda_stream
    gc.collect()
    assert any(CudaGraphs(device).capture_stream.cuda_stream == released for _ in range(32))


def concurrent_replay_mismatches(sets: tuple[CudaGraphs, CudaGraphs], replays: int = 300) -> int:
    """Capture a split-K-shaped GEMM (few rows, long K) in each set, replay the two side by side on
    two streams `replays` times, keeping every result, and count results that differ from a replay
    of the same graph alone."""
    device = sets[0].device
    gen = torch.Generator(device).manual_seed(0)
    x = [torch.randn(16, 16384, device=device, dtype=torch.bfloat16, generator=gen) for _ in sets]
    w = [torch.randn(16384, 256, device=device, dtype=torch.bfloat16, generator=gen) for _ in sets]
    for a, b in zip(x, w):  # cuBLAS set up outside capture
        a @ b
    torch.cuda.synchronize()
    outs = [graphs.capture("gemm", lambda a=a, b=b: a @ b) for graphs, a, b in zip(sets, x, w)]
    expected = []
    for graphs, out in zip(sets, outs):  # each alone first: the same kernels, nothing beside them
        graphs.replay("gemm")
        torch.cuda.synchronize()
        expected.append(out.clone())
    kept = [torch.empty(replays, *e.shape, device=device, dtype=e.dtype) for e in expected]
    streams = [torch.cuda.Stream(device) for _ in sets]
    torch.cuda.synchronize()
    for i in range(replays):
        for graphs, stream, out, keep in zip(sets, streams, outs, kept):
            with torch.cuda.stream(stream):
                graphs.replay("gemm")
                keep[i].copy_(out)
    torch.cuda.synchronize()
    return sum(int((keep != e).flatten(1).any(1).sum()) for keep, e in zip(kept, expected))


def test_two_sets_replayed_side_by_side_give_the_eager_results() -> None:
    device = torch.device("cuda")
    assert concurrent_replay_mismatches((CudaGraphs(device), CudaGraphs(device))) == 0
