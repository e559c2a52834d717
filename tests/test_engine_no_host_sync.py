"""On a GPU, the engine loop waits for the device in one place only: when it reads a step's codes and
the decoded audio (`ModelRunner.fetch`). Admission, the step launch, stopping and freeing slots and
the audio decode launch must queue work behind the steps in flight, never wait for them: a single
hidden synchronisation (a CUDA tensor element set from a Python number copies from pageable memory)
stalls the pipelined loop for a whole step. CUDA's sync debug mode turns any such wait into an error."""

from __future__ import annotations

import contextlib
import copy
import functools

import pytest
import torch

from serve_app.engine.loop import EngineLoop
from serve_app.engine.runner import ModelRunner
from serve_app.engine.scheduler import Scheduler
from serve_app.engine.types import FinishReason
from tests import support_engine as se

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

LAUNCH_PHASE = ("start", "step", "deactivate", "release", "flush_deactivated", "decode_audio")


@contextlib.contextmanager
def no_sync():
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def guarded(fn):  # type: ignore[no-untyped-def]
    @functools.wraps(fn)
    def call(*args, **kwargs):  # type: ignore[no-untyped-def]
        with no_sync():
            return fn(*args, **kwargs)

    return call


@torch.inference_mode()
def test_admission_steps_stops_and_audio_launches_never_wait_for_the_device() -> None:
    chunks = se.SMALL_CHUNKS
    runner = ModelRunner(
        se.model().cuda(),
        copy.deepcopy(se.codec().model).cuda(),  # the cached CPU codec stays as it is
        4,
        vocab_limit=2048,
        cuda_graphs=True,
        audio_chunk_sizes=chunks.sizes,
    )
    for name in LAUNCH_PHASE:
        setattr(runner, name, guarded(getattr(runner, name)))
    loop = EngineLoop(runner, Scheduler(4, 8), chunks, se.NO_SILENCE_GUARD)
    got = [se.sequence(se.request(f"Stream number {i}.", frames=8 + 3 * i, seed=i)) for i in range(4)]
    for g in got[:3]:
        loop.submit(g.seq)
    for _ in range(4):  # a sync in a guarded call raises here
        loop.run_once()
    loop.cancel(got[1].seq)  # its slot is released, then reused
    loop.submit(got[3].seq)
    se.run_until_idle(loop, limit=60)
    assert got[1].seq.finish_reason is FinishReason.CANCELLED
    for g in (got[0], got[2], got[3]):
        assert g.chunks and g.chunks[-1].is_last, "the other streams ran to their end"
        assert g.codes.shape[0] == g.seq.max_frames
