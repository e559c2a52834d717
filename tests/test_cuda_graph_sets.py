"""Sets of CUDA graphs replayed side by side on two streams (the decode step's and the audio
decoder's) must not share the scratch memory their cuBLAS calls were captured with."""

from __future__ import annotations

import copy
import gc

import pytest
import torch

from serve_app.engine.cuda_graphs import CudaGraphs
from serve_app.engine.runner import ModelRunner
from tests import support_engine as se

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
