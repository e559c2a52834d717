"""Joining prompts packed on the host (`engine.prompt_rows`): the same rows, positions, slots and
padding as built one prompt at a time, and an admission whose torch calls do not grow with its
prompt count."""

from __future__ import annotations

import pytest
import torch

from serve_app.engine import prompt_rows as pr
from serve_app.engine.sequence import Sequence
from tests import support_engine as se


def seq_with_rows(rows: int, slot: int, seed: int) -> Sequence:
    """A sequence whose prompt is `rows` random rows (random tokens and mask), in `slot`."""
    seq = se.sequence(se.request("x", frames=4)).seq
    gen = torch.Generator().manual_seed(seed)
    seq.tokens = torch.randint(0, 2000, (rows, pr.TOKEN_COLUMNS), generator=gen)
    seq.mask = torch.rand(rows, pr.TOKEN_COLUMNS, generator=gen) < 0.5
    seq.slot = slot
    return seq


def reference_prefill(seqs: list[Sequence], batch: int, width: int) -> tuple[torch.Tensor, ...]:
    """Row by row: every prompt row but the last, right-padded (position -1) in the prompt's slot;
    rows past the prompts are padding in slot 0."""
    tokens = torch.zeros(batch, width, pr.TOKEN_COLUMNS, dtype=torch.long)
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    positions = torch.full((batch, width), -1, dtype=torch.long)
    slots = torch.zeros(batch, dtype=torch.long)
    for i, s in enumerate(seqs):
        t = s.prompt_len - 1
        tokens[i, :t], mask[i, :t] = s.tokens[:t], s.mask[:t]
        positions[i, :t] = torch.arange(t)
        slots[i] = s.slot
    return tokens, mask, positions, slots


def test_prefill_rows_hold_each_prompt_left_aligned_in_its_own_row_and_slot() -> None:
    lengths, slots = [5, 2, 17, 9], [3, 0, 6, 1]
    seqs = [seq_with_rows(n, slot, seed=n) for n, slot in zip(lengths, slots, strict=True)]
    tokens, mask, positions, row_slots = pr.unpack_rows(torch.from_numpy(pr.prefill_rows(seqs, 8, 16)))
    want = reference_prefill(seqs, 8, 16)
    assert mask.dtype == torch.bool
    for got, expected in zip((tokens, mask, positions, row_slots[:, 0]), want, strict=True):
        assert torch.equal(got, expected)
    assert torch.equal(row_slots, row_slots[:, :1].expand(8, 16))  # a row's padding stays in its slot


def test_flat_rows_hold_every_prompt_one_after_another_then_padding() -> None:
    seqs = [seq_with_rows(n, slot, seed=n) for n, slot in ((4, 2), (7, 0), (2, 5))]
    tokens, mask, positions, slots = pr.unpack_rows(torch.from_numpy(pr.flat_rows(seqs, 16)))
    rows = pr.prompt_row_count(seqs)
    assert rows == 3 + 6 + 1
    assert torch.equal(tokens[:rows], torch.cat([s.tokens[:-1] for s in seqs]))
    assert torch.equal(mask[:rows], torch.cat([s.mask[:-1] for s in seqs]))
    assert positions.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5, 0] + [-1] * 6
    assert slots.tolist() == [2] * 3 + [0] * 6 + [5] + [0] * 6
    assert not tokens[rows:].any() and not mask[rows:].any()
    with pytest.raises(ValueError, match="do not fit"):
        pr.flat_rows(seqs, 8)


def test_arming_rows_take_each_prompts_last_row() -> None:
    seqs = [seq_with_rows(n, slot, seed=n) for n, slot in ((4, 2), (1, 0))]
    armed = pr.arming_rows(seqs)
    width = pr.TOKEN_COLUMNS
    assert armed[:, 0].tolist() == [2, 0] and armed[:, 1].tolist() == [3, 0]
    assert torch.equal(armed[:, pr.ARMING_COLUMNS : pr.ARMING_COLUMNS + width], torch.stack([s.tokens[-1] for s in seqs]))
    assert torch.equal(armed[:, pr.ARMING_COLUMNS + width :].bool(), torch.stack([s.mask[-1] for s in seqs]))


def admission_torch_calls(prompts: int) -> list[str]:
    loop = se.make_loop(n_slots=8)
    seqs = []
    for i in range(prompts):
        seq = se.sequence(se.request(f"prompt number {i} has a few more words", 4)).seq
        seq.slot = i
        seqs.append(seq)
    # `Tensor.numpy` only wraps the tensor's memory: no dispatcher call, the GIL kept.
    return [c for c in se.torch_calls(lambda: loop.runner.start(seqs)) if c != "Tensor.numpy"]


def test_an_admission_makes_as_many_torch_calls_for_six_prompts_as_for_one() -> None:
    """The loop thread's torch calls each give up the GIL and may wait to take it back behind the
    replica's event loop: what an admission sends is built in numpy, so its calls do not grow with
    the number of prompts joining."""
    one, six = admission_torch_calls(1), admission_torch_calls(6)
    assert one and sorted(six) == sorted(one)
