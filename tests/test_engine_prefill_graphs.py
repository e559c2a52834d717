"""On a GPU, admitted prompts are prefilled by replaying captured graphs (batch bucket x width); the
KV caches they write equal an eager prefill's, and admission never waits for the device."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from serve_app.engine.runner import ModelRunner
from serve_app.engine.sequence import Sequence
from serve_app.model.csm import CsmModel
from tests import support_engine as se

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def runner(graphs: bool, model: CsmModel | None = None, **options: Any) -> ModelRunner:
    chunks = se.SMALL_CHUNKS
    return ModelRunner(
        (model or se.model()).cuda(),
        copy.deepcopy(se.codec().model).cuda(),  # the cached CPU codec stays as it is
        8,
        vocab_limit=2048,
        cuda_graphs=graphs,
        audio_chunk_sizes=chunks.sizes,
        **options,
    )


TEXTS = ["Hi.", "A somewhat longer prompt, with a clause or two in it.", "Mid length words."] * 2


@contextlib.contextmanager
def no_device_sync() -> Iterator[None]:
    """Any wait for the device inside raises."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def admitted(r: ModelRunner) -> list[Sequence]:
    """`TEXTS`' sequences admitted together in slots 5, 0, 2, 7, 1, 3, without waiting for the device."""
    batch = [se.sequence(se.request(t, frames=4, seed=i)).seq for i, t in enumerate(TEXTS)]
    for slot, seq in zip((5, 0, 2, 7, 1, 3), batch):
        seq.slot = slot
    with no_device_sync():
        r.start(batch)
    return batch


@pytest.mark.parametrize(
    "fused",
    [None, "sdpa", "kernel"],
    ids=["cublas-sdpa", "fused-projections-sdpa", "fused-projections-kernel-attention"],
)
@torch.inference_mode()
def test_graphed_prefill_writes_the_eager_prefills_caches(fused: str | None) -> None:
    """Captured prefills (for a fused prefill: the heads wide enough for the Triton kernels, its
    projections and the way it attends) write the caches and first-step inputs of an eager prefill
    through cuBLAS and SDPA."""
    if fused is None:
        graphed, eager = runner(True), runner(False)
    else:
        graphed = runner(True, se.wide_head_model(), linear_max_batch=1 << 16, prefill_attention=fused)
        eager = runner(False, se.wide_head_model(), linear_max_batch=0)
        assert graphed.fast.prefill_fused_rows and not eager.fast.prefill_fused_rows
    assert graphed._prefill_inputs_of, "prefills were captured"
    tol = 1e-4 if fused is None else 1e-3  # the Triton kernels round in another order
    seqs = {name: admitted(r) for name, r in (("graphed", graphed), ("eager", eager))}
    torch.cuda.synchronize()
    for layer in (0, -1):
        k_graph = graphed.model.backbone.layers[layer].attention.kv_cache.k
        k_eager = eager.model.backbone.layers[layer].attention.kv_cache.k
        for seq in seqs["graphed"]:
            rows = seq.prompt_len - 1
            torch.testing.assert_close(
                k_graph[seq.slot, :, :rows], k_eager[seq.slot, :, :rows], rtol=tol, atol=tol
            )
    # The admitted slots' first step inputs (the other rows hold what capture warm-ups left there).
    used = torch.tensor([seq.slot for seq in seqs["graphed"]], device=graphed.embeds.device)
    torch.testing.assert_close(graphed.embeds[used], eager.embeds[used])
    torch.testing.assert_close(graphed.positions[used], eager.positions[used])


@torch.inference_mode()
def test_a_graphed_step_carrying_the_prompts_writes_the_caches_and_codes_of_a_prefill_then_a_step() -> None:
    """Six prompts admitted together ride in the first step's captured backbone pass (no prefill
    graph replayed); after that step the caches and the step's hidden states are what an eager
    prefill then step wrote."""
    carried = runner(True, se.wide_head_model(), linear_max_batch=1 << 16, prompts_in_step=True)
    eager = runner(False, se.wide_head_model(), linear_max_batch=1 << 16)
    assert carried.prompts_in_step and not eager.prompts_in_step
    captured = carried._graphs.keys()  # type: ignore[union-attr]
    assert any(key[0] == "step_prompts" for key in captured)  # type: ignore[index]
    replays: list[tuple[object, ...]] = []
    replay = carried._graphs.replay  # type: ignore[union-attr]
    carried._graphs.replay = lambda key: (replays.append(key), replay(key))[1]  # type: ignore[union-attr,method-assign]
    seqs = {}
    for name, r in (("carried", carried), ("eager", eager)):
        seqs[name] = admitted(r)
        with no_device_sync():
            out = r.step(8, max(s.prompt_len for s in seqs[name]))
        r.fetch(out, [])
    assert [key[0] for key in replays] == ["step_prompts", "depth"]
    for layer in (0, -1):
        k_carried = carried.model.backbone.layers[layer].attention.kv_cache.k
        k_eager = eager.model.backbone.layers[layer].attention.kv_cache.k
        for seq in seqs["carried"]:
            written = seq.prompt_len  # the prompt's rows and the first step's
            torch.testing.assert_close(
                k_carried[seq.slot, :, :written], k_eager[seq.slot, :, :written], rtol=1e-3, atol=1e-3
            )
    used = [seq.slot for seq in seqs["carried"]]
    torch.testing.assert_close(carried.hidden[used], eager.hidden[used], rtol=1e-3, atol=1e-3)
