"""Admitted prompts are prefilled in groups that each match one captured prefill graph."""

from __future__ import annotations

import pytest
import torch

from serve_app.engine.prompt_rows import PREFILL_WIDTHS, prefill_groups
from serve_app.engine.sequence import Sequence
from tests import support_engine as se

BATCHES = (1, 2, 4, 8, 16)


def seq_with_rows(rows: int, slot: int) -> Sequence:
    got = se.sequence(se.request("x", frames=4))
    seq = got.seq
    seq.tokens = torch.zeros(rows, 33, dtype=torch.long)
    seq.mask = torch.zeros(rows, 33, dtype=torch.bool)
    seq.slot = slot
    return seq


@pytest.mark.parametrize("budget", [64, 256, 8192])
def test_every_prompt_lands_in_one_group_that_fits_a_captured_shape(budget: int) -> None:
    lengths = [3, 40, 17, 17, 200, 9, 1025, 2, 64, 65, 33, 5, 5, 5]
    seqs = [seq_with_rows(n, i) for i, n in enumerate(lengths)]
    groups = prefill_groups(seqs, BATCHES, PREFILL_WIDTHS, budget)
    placed = [s for g in groups for s in g.seqs]
    assert sorted(id(s) for s in placed) == sorted(id(s) for s in seqs)  # each exactly once
    for g in groups:
        assert g.batch in BATCHES and g.width in PREFILL_WIDTHS
        assert len(g.seqs) <= g.batch and all(s.prompt_len - 1 <= g.width for s in g.seqs)
        assert g.batch * g.width <= budget or g.batch == 1
        # the smallest width holding the group's longest prompt: no needless padding
        longest = max(s.prompt_len - 1 for s in g.seqs)
        assert g.width == min(w for w in PREFILL_WIDTHS if w >= longest)


def test_a_burst_of_short_prompts_is_one_replay() -> None:
    seqs = [seq_with_rows(30, i) for i in range(13)]
    (group,) = prefill_groups(seqs, BATCHES, PREFILL_WIDTHS, 8192)
    assert (group.batch, group.width, len(group.seqs)) == (16, 32, 13)
