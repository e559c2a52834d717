"""On a CUDA device: the graph-captured decode step (plain, fused, compiled) streams what the eager step
streams, capture falls back to eager kernels and then to the unfused attention rather than fail, and the
fused bf16 step tracks the eager bf16 step. Skipped without CUDA (`gpu` mark)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from serve_app.engine.loop import EngineLoop
from serve_app.engine.runner import ModelRunner
from serve_app.engine.scheduler import Scheduler
from serve_app.model.csm import CsmModel
from serve_app.model.fast_step import FastStep
from tests import support_engine as se

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
TEXTS = ("first stream of words", "second", "a third and longer stream of words")


def runner(model: CsmModel, **options: Any) -> ModelRunner:
    mimi = copy.deepcopy(se.codec().model).to(CUDA)
    chunks = se.SMALL_CHUNKS
    return ModelRunner(
        model.to(CUDA),
        mimi,
        4,
        vocab_limit=2048,
        audio_chunk_sizes=(chunks.first_frames, chunks.frames),
        **options,
    )


def stream_all(run: ModelRunner) -> list[se.Collected]:
    """Three seeded requests, two joining after the first has started, through the real loop."""
    loop = EngineLoop(run, Scheduler(run.n_slots, 8), se.SMALL_CHUNKS, se.NO_SILENCE_GUARD)
    got = [se.sequence(se.request(text, frames=9, seed=i)) for i, text in enumerate(TEXTS)]
    loop.submit(got[0].seq)
    loop.run_once()
    for item in got[1:]:
        loop.submit(item.seq)
    se.run_until_idle(loop)
    return got


def assert_same_streams(got: list[se.Collected], want: list[se.Collected]) -> None:
    for g, w in zip(got, want, strict=True):
        assert len(g.codes) == 9
        np.testing.assert_array_equal(g.codes, w.codes)
        np.testing.assert_allclose(g.pcm, w.pcm, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
@pytest.mark.parametrize(
    "fused, linear_max_batch",
    [(False, 0), (True, 0), (True, 4)],
    ids=["eager-kernels", "fused-attention", "fused-projections"],
)
def test_graph_replay_streams_what_the_eager_step_streams(
    fused: bool, linear_max_batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not fused:  # the unfused step on a GPU: as when the kernel cannot run
        monkeypatch.setattr("serve_app.model.fast_step.fused_attention_supports", lambda *_: False)
    eager = runner(se.wide_head_model(), linear_max_batch=linear_max_batch)
    graphed = runner(se.wide_head_model(), cuda_graphs=True, linear_max_batch=linear_max_batch)
    assert graphed.fast.fused == eager.fast.fused == fused
    assert graphed.fast.fused_linear_for(4) == bool(linear_max_batch)
    assert graphed.info()["cuda_graphs"] and "compile_error" not in graphed.info()
    assert_same_streams(stream_all(graphed), stream_all(eager))


def clear_margin_model() -> CsmModel:
    """Codebook heads scaled up: logits with clear margins, so that compiled kernels, which round
    differently from eager ones, still pick the same codes."""
    model = se.wide_head_model()
    with torch.no_grad():
        model.codebook0_head.weight.mul_(20)
        model.audio_head.mul_(20)
    return model


@torch.inference_mode()
def test_compiled_graphs_stream_what_the_eager_step_streams() -> None:
    eager = runner(clear_margin_model())
    compiled = runner(clear_margin_model(), cuda_graphs=True, compile=True)
    assert compiled.compiled and compiled.fast.fused, compiled.info()
    assert_same_streams(stream_all(compiled), stream_all(eager))


@torch.inference_mode()
def test_a_failing_compiler_falls_back_to_graphs_of_eager_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(self: FastStep, mode: str | None = None) -> None:
        def fail(*_: Any) -> Any:
            raise RuntimeError("the compiler gave up")

        self._prefill = self._backbone_step = self._frame_start = self._depth_step = fail

    monkeypatch.setattr(FastStep, "compile", broken_compile)
    fallen = runner(se.wide_head_model(), cuda_graphs=True, compile=True)
    assert not fallen.compiled and fallen.fast.fused
    assert "the compiler gave up" in fallen.info()["compile_error"]
    assert_same_streams(stream_all(fallen), stream_all(runner(se.wide_head_model())))


@torch.inference_mode()
def test_a_failing_attention_kernel_falls_back_to_the_unfused_step(monkeypatch: pytest.MonkeyPatch) -> None:
    from serve_app.model.kernels.backends import TritonDecodeAttention

    def fail(*_: Any) -> Any:
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(TritonDecodeAttention, "attend", fail)
    fallen = runner(se.wide_head_model(), cuda_graphs=True)
    assert not fallen.fast.fused and "no kernel for this GPU" in fallen.info()["compile_error"]
    monkeypatch.undo()
    monkeypatch.setattr("serve_app.model.fast_step.fused_attention_supports", lambda *_: False)
    assert_same_streams(stream_all(fallen), stream_all(runner(se.wide_head_model())))


@torch.inference_mode()
@pytest.mark.parametrize("linear_max_batch", [0, 4], ids=["fused-attention", "fused-projections"])
def test_the_fused_bf16_step_tracks_the_eager_bf16_step(linear_max_batch: int) -> None:
    """bf16 rounds differently in the kernels than in the eager ops: hidden states agree to bf16
    precision over a few steps, for live rows; idle rows stay finite."""
    models = [se.wide_head_model().to(CUDA, torch.bfloat16) for _ in range(2)]
    for m in models:
        m.setup_caches(4)
    plain = FastStep(models[0], 2048, fused_attention=False)
    fused = FastStep(models[1], 2048, fused_attention=True, linear_max_batch=linear_max_batch)
    embeds = torch.randn(4, models[0].cfg.backbone.dim, generator=torch.Generator().manual_seed(0))
    embeds = embeds.to(CUDA, torch.bfloat16)
    for pos in ([0, 3, -1, 7], [1, 4, 0, 8], [2, 5, 1, 9]):
        positions = torch.tensor(pos, device=CUDA)
        h_plain = plain.backbone_step(embeds, positions, 128)
        h_fused = fused.backbone_step(embeds, positions, 128)
        live = positions >= 0
        err = (h_fused[live].float() - h_plain[live].float()).norm() / h_plain[live].float().norm()
        assert float(err) < 3e-2
        assert bool(torch.isfinite(h_fused).all())
        embeds = h_plain
