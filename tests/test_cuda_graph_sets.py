"""Sets of CUDA graphs replayed side by side on two streams (the decode step's and the audio
decoder's) must not share the scratch memory their cuBLAS calls were captured with."""

from __future__ import annotations

import copy
import gc
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from serve_app.engine import cuda_graphs
from serve_app.engine.cuda_graphs import CudaGraphs
from serve_app.engine.runner import ModelRunner
from tests import support_engine as se

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class _Pool:
    """PyTorch's stream pool as `torch.cuda.Stream` sees it: `size` streams handed out round-robin."""

    def __init__(self, size: int) -> None:
        self.size, self.drawn = size, 0

    def __call__(self, device: object = None) -> SimpleNamespace:
        self.drawn += 1
        return SimpleNamespace(cuda_stream=1000 + self.drawn % self.size)


def test_sets_hold_distinct_pooled_streams_and_release_them(monkeypatch) -> None:
    monkeypatch.setattr(cuda_graphs, "_HELD_STREAMS", Counter())
    monkeypatch.setattr(torch.cuda, "Stream", _Pool(4))
    held = [cuda_graphs._dedicated_stream(torch.device("cuda")).cuda_stream for _ in range(4)]
    assert sorted(held) == [1000, 1001, 1002, 1003]
    cuda_graphs._release_stream(held[1])
    assert cuda_graphs._dedicated_stream(torch.device("cuda")).cuda_stream == held[1]  # the only free one


def test_an_exhausted_pool_shares_a_stream_and_releases_only_its_own_hold(monkeypatch, caplog) -> None:
    monkeypatch.setattr(cuda_graphs, "_HELD_STREAMS", Counter())
    monkeypatch.setattr(torch.cuda, "Stream", _Pool(2))
    first, second = (cuda_graphs._dedicated_stream(torch.device("cuda")).cuda_stream for _ in range(2))
    with caplog.at_level("WARNING", logger="serve_app.engine.cuda_graphs"):
        shared = cuda_graphs._dedicated_stream(torch.device("cuda")).cuda_stream
    assert "sharing one" in caplog.text and shared in (first, second)
    cuda_graphs._release_stream(shared)  # the sharer goes: the first holder still holds it
    assert cuda_graphs._HELD_STREAMS[shared] == 1


@pytest.mark.gpu
@requires_cuda
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


@pytest.mark.gpu
@requires_cuda
@torch.inference_mode()
def test_the_decode_steps_and_the_audio_decoders_graphs_capture_on_different_streams() -> None:
    runner = ModelRunner(
        se.model().cuda(),
        copy.deepcopy(se.codec().model).cuda(),  # the cached CPU codec stays as it is
        2,
        vocab_limit=2048,
        cuda_graphs=True,
        audio_chunk_sizes=se.SMALL_CHUNKS.sizes,
    )
    step_graphs, audio_graphs = runner._graphs, runner.decoder._graphs
    assert step_graphs is not None and audio_graphs is not None and len(audio_graphs) > 0
    assert step_graphs.capture_stream.cuda_stream != audio_graphs.capture_stream.cuda_stream
