"""On a GPU, admitted prompts are prefilled by replaying captured graphs (batch bucket x width); the
KV caches they write equal an eager prefill's, and admission never waits for the device."""

from __future__ import annotations

import copy

import pytest
import torch

from serve_app.engine.runner import ModelRunner
from tests import support_engine as se

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def runner(graphs: bool) -> ModelRunner:
    chunks = se.SMALL_CHUNKS
    return ModelRunner(
        se.model().cuda(),
        copy.deepcopy(se.codec().model).cuda(),  # the cached CPU codec stays as it is
        8,
        vocab_limit=2048,
        cuda_graphs=graphs,
        audio_chunk_sizes=chunks.sizes,
    )


@torch.inference_mode()
def test_graphed_prefill_writes_the_eager_prefills_caches() -> None:
    graphed, eager = runner(True), runner(False)
    assert graphed._prefill_inputs_of, "prefills were captured"
    texts = ["Hi.", "A somewhat longer prompt, with a clause or two in it.", "Mid length words."] * 2
    seqs = {}
    for name, r in (("graphed", graphed), ("eager", eager)):
        batch = [se.sequence(se.request(t, frames=4, seed=i)).seq for i, t in enumerate(texts)]
        for slot, seq in zip((5, 0, 2, 7, 1, 3), batch):
            seq.slot = slot
        torch.cuda.set_sync_debug_mode("error")
        try:
            r.start(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        seqs[name] = batch
    torch.cuda.synchronize()
    for layer in (0, -1):
        k_graph = graphed.model.backbone.layers[layer].attention.kv_cache.k
        k_eager = eager.model.backbone.layers[layer].attention.kv_cache.k
        for seq in seqs["graphed"]:
            rows = seq.prompt_len - 1
            torch.testing.assert_close(
                k_graph[seq.slot, :, :rows], k_eager[seq.slot, :, :rows], rtol=1e-4, atol=1e-4
            )
    # The admitted slots' first step inputs (the other rows hold what capture warm-ups left there).
    used = torch.tensor([seq.slot for seq in seqs["graphed"]], device=graphed.embeds.device)
    torch.testing.assert_close(graphed.embeds[used], eager.embeds[used])
    torch.testing.assert_close(graphed.positions[used], eager.positions[used])
