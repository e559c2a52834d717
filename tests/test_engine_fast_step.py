"""The engine's decode math (`FastStep`) computes the model's function: same hidden states and the same
codebook-0 and depth logits as `CsmModel`'s own forward, for slot rows, padding and idle rows."""

from __future__ import annotations

import pytest
import torch

from serve_app.engine.prompt import build_prompt
from serve_app.model.fast_step import FastStep
from serve_app.model.sampling import noise_columns
from tests import support_engine as se

pytestmark = pytest.mark.usefixtures("one_thread")


def prompts() -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for text in ("short", "a somewhat longer prompt"):
        p = build_prompt(se.tokenizer(), text, 1, [], 10)
        out.append((p.tokens, p.mask))
    return out


def reference_last_hidden(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    model = se.model()
    model.setup_caches(1)
    t = tokens.shape[0]
    h = model.backbone_forward(model.embed_rows(tokens[None], mask[None]), torch.arange(t)[None])
    return h[0, -1]


@torch.inference_mode()
def test_prefill_then_step_equals_the_model_forward_in_any_slot() -> None:
    model = se.model()
    model.setup_caches(4)
    fast = FastStep(model)
    (ta, ma), (tb, mb) = prompts()
    # Prefill all rows but the last of two prompts into slots 2 and 0 (right-padded batch).
    width = max(ta.shape[0], tb.shape[0]) - 1
    tokens = torch.zeros(2, width, 33, dtype=torch.long)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    positions = torch.full((2, width), -1)
    for i, (t, m) in enumerate([(ta, ma), (tb, mb)]):
        n = t.shape[0] - 1
        tokens[i, :n], mask[i, :n], positions[i, :n] = t[:n], m[:n], torch.arange(n)
    fast.prefill(tokens, mask, positions, torch.tensor([2, 0]), kv_len=width)
    # One decode step over rows 0..3: slot 2 holds a, slot 0 holds b, slots 1 and 3 are idle.
    embeds = torch.zeros(4, model.cfg.backbone.dim)
    embeds[2] = model.embed_rows(ta[-1:][None], ma[-1:][None])[0, 0]
    embeds[0] = model.embed_rows(tb[-1:][None], mb[-1:][None])[0, 0]
    step_pos = torch.tensor([tb.shape[0] - 1, -1, ta.shape[0] - 1, -1])
    h = fast.backbone_step(embeds, step_pos, kv_len=128)
    torch.testing.assert_close(h[2], reference_last_hidden(ta, ma), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h[0], reference_last_hidden(tb, mb), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(h).all()  # idle rows stay finite (no NaN can reach an embedding lookup)


@torch.inference_mode()
def test_depth_frame_logits_equal_the_model_depth_decoder() -> None:
    model = se.model()
    model.setup_caches(3)
    h = torch.randn(3, model.cfg.backbone.dim, generator=torch.Generator().manual_seed(0))

    ref_logits: list[torch.Tensor] = []

    def ref_sampler(logits: torch.Tensor, codebook: int) -> torch.Tensor:
        ref_logits.append(logits)
        return logits[:, :2048].argmax(-1)

    ref_codes = model.generate_frame(h, ref_sampler)

    fast = FastStep(model, vocab_limit=2048)
    got_logits: list[torch.Tensor] = []

    def fast_sample(logits, codebook, temperature, top_k, seeds, frame):  # type: ignore[no-untyped-def]
        got_logits.append(logits)
        return logits[:, :2048].argmax(-1)

    fast._sample = fast_sample  # type: ignore[method-assign]
    ones = torch.ones(3, dtype=torch.long)
    codes = fast.depth_frame(h, ones.float(), ones, ones, ones * 0)
    assert len(got_logits) == len(ref_logits) == 32
    for got, ref in zip(got_logits, ref_logits):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(codes, ref_codes)


@torch.inference_mode()
def test_sampled_frame_is_independent_of_the_rest_of_the_batch() -> None:
    model = se.model()
    model.setup_caches(4)
    fast = FastStep(model, vocab_limit=2048)
    h = torch.randn(4, model.cfg.backbone.dim, generator=torch.Generator().manual_seed(1))
    temperature = torch.tensor([0.9, 0.7, 1.0, 0.9])
    top_k = torch.tensor([50, 1, 20, 50])
    seeds = torch.tensor([5, 6, 7, 8])
    frame = torch.tensor([0, 3, 9, 0])
    batch = fast.depth_frame(h, temperature, top_k, seeds, frame)
    for row in range(4):
        alone = fast.depth_frame(
            h[row : row + 1],
            temperature[row : row + 1],
            top_k[row : row + 1],
            seeds[row : row + 1],
            frame[row : row + 1],
        )
        torch.testing.assert_close(alone[0], batch[row])
    assert not torch.equal(batch[0], batch[3])  # same frame index, other seed: other codes
    assert batch.max() < 2048 and batch.min() >= 0


@torch.inference_mode()
@pytest.mark.parametrize("vocab_limit", [2048, None])
def test_a_sampled_frame_is_the_reference_generators_frame(vocab_limit: int | None) -> None:
    """The engine's step and the reference generator (`CsmModel.generate_frame` with a `BatchSampler`)
    draw the same codes for the same seeds, temperatures, top-k and frame counters."""
    from serve_app.engine.sampling import BatchSampler

    model = se.model()
    model.setup_caches(4)
    h = torch.randn(4, model.cfg.backbone.dim, generator=torch.Generator().manual_seed(2))
    temperature = torch.tensor([0.9, 0.6, 1.2, 0.9])
    top_k = torch.tensor([50, 1, 2051, 5])
    seeds = torch.tensor([3, -(2**60), 2**62 + 1, 3])
    frame = torch.tensor([0, 4, 17, 1])
    vocab = model.cfg.audio_vocab_size
    sampler = BatchSampler(temperature, top_k, seeds, frame, noise_columns(vocab_limit or vocab))
    want = model.generate_frame(h, sampler)
    got = FastStep(model, vocab_limit=vocab_limit).depth_frame(h, temperature, top_k, seeds, frame)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(got[0], got[3])  # same seed, next frame: other codes
