"""The model API's batching contract: slots, padding, reused slots, window bounds."""

from __future__ import annotations

import pytest
import torch

from serve_app.model.csm import CsmModel
from serve_app.model.tiny import random_model

pytestmark = pytest.mark.usefixtures("one_thread")

D = 64  # tiny backbone width


@pytest.fixture(scope="module")
def model() -> CsmModel:
    return random_model(seed=1).eval()


def alone(model: CsmModel, x: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-1 reference: prefill x (T, D), then feed steps (S, D); last hidden states of each."""
    model.setup_caches(1)
    t = x.shape[0]
    with torch.no_grad():
        h = model.backbone_forward(x[None], torch.arange(t)[None])[0]
        hs = [
            model.backbone_forward(s.view(1, 1, D), torch.tensor([[t + i]]))[0, 0]
            for i, s in enumerate(steps)
        ]
    return h, torch.stack(hs)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_padded_prefill_in_slots_then_steps_match_each_prompt_alone(model: CsmModel, padding: str) -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = [7, 3, 11]
    prompts = [torch.randn(n, D, generator=gen) for n in lengths]
    steps = torch.randn(3, 4, D, generator=gen)
    expected = [alone(model, p, s) for p, s in zip(prompts, steps)]

    model.setup_caches(5)
    slots = torch.tensor([4, 0, 2])
    width = max(lengths)
    x = torch.zeros(3, width, D)
    positions = torch.full((3, width), -1)
    for i, (p, n) in enumerate(zip(prompts, lengths)):
        cols = slice(0, n) if padding == "right" else slice(width - n, width)
        x[i, cols], positions[i, cols] = p, torch.arange(n)
    with torch.no_grad():
        h = model.backbone_forward(x, positions, slots)
        got_steps = [
            model.backbone_forward(steps[:, j, None], torch.tensor(lengths)[:, None] + j, slots)[:, 0]
            for j in range(steps.shape[1])
        ]
    for i, (exp_prefill, exp_steps) in enumerate(expected):
        close(h[i][positions[i] >= 0], exp_prefill)
        close(torch.stack([s[i] for s in got_steps]), exp_steps)


def test_finished_rows_write_nothing_and_a_window_bound_changes_nothing(model: CsmModel) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, D, generator=gen)
    step = torch.randn(2, 1, D, generator=gen)
    model.setup_caches(2)
    with torch.no_grad():
        model.backbone_forward(x, torch.arange(6).expand(2, 6))
        full = model.backbone_forward(step, torch.tensor([[6], [6]]))
        # Row 1 is "finished": its garbage input at position -1 must touch neither its own cache
        # nor row 0's result.
        garbage = torch.stack([step[0], 100 * torch.randn(1, D, generator=gen)])
        mixed = model.backbone_forward(garbage, torch.tensor([[6], [-1]]), kv_len=16)
        again = model.backbone_forward(step, torch.tensor([[6], [6]]), kv_len=8)
    close(mixed[0], full[0])
    close(again, full)


def test_a_reused_slot_does_not_see_the_previous_request(model: CsmModel) -> None:
    gen = torch.Generator().manual_seed(2)
    old, new = torch.randn(20, D, generator=gen), torch.randn(5, D, generator=gen)
    step = torch.randn(1, D, generator=gen)
    expected_prefill, expected_step = alone(model, new, step)
    model.setup_caches(2)
    with torch.no_grad():
        model.backbone_forward(old[None], torch.arange(20)[None], torch.tensor([1]))
        h = model.backbone_forward(new[None], torch.arange(5)[None], torch.tensor([1]))[0]
        s = model.backbone_forward(step.view(1, 1, D), torch.tensor([[5]]), torch.tensor([1]))[0]
    close(h, expected_prefill)
    close(s, expected_step)


def test_embed_rows_sums_only_unmasked_columns(model: CsmModel) -> None:
    tokens = torch.randint(0, 200, (1, 2, 33))
    mask = torch.zeros(1, 2, 33, dtype=torch.bool)
    mask[0, 0, 32] = True  # a text row
    mask[0, 1, :32] = True  # an audio row
    with torch.no_grad():
        rows = model.embed_rows(tokens, mask)[0]
        close(rows[0], model.text_embeddings.weight[tokens[0, 0, 32]])
        close(rows[1], model.embed_frame(tokens[0, 1, :32][None])[0])


def test_generate_frame_without_caches_fails_clearly() -> None:
    fresh = random_model(seed=5)
    with pytest.raises(RuntimeError, match="setup_caches"):
        fresh.backbone_forward(torch.zeros(1, 1, D), torch.zeros(1, 1, dtype=torch.long))
