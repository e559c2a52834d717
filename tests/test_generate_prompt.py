"""Prompt rows, the CSM text template and context truncation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.engine.prompt import build_prompt
from serve_app.engine.types import PromptTooLongError, Segment
from serve_app.model.tokenizer import TextTokenizer

TOK = TextTokenizer.tiny()


def codes(frames: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(1, 2048, size=(frames, 32))


def test_turn_template_is_bos_speaker_text_eos() -> None:
    ids = TOK.encode_turn("hi", 1)
    assert ids[0] == TOK.bos_id and ids[-1] == TOK.eos_id
    assert TOK.decode(ids) == "<|begin_of_text|>[1]hi<|end_of_text|>"


def test_rows_text_then_audio_with_a_zero_eos_frame_and_a_text_only_target() -> None:
    ctx = codes(4)
    prompt = build_prompt(TOK, "target", 0, [Segment(text="ctx", speaker=1, codes=ctx)], max_frames=10)
    ctx_text, target_text = TOK.encode_turn("ctx", 1), TOK.encode_turn("target", 0)
    n_ctx = len(ctx_text)
    assert len(prompt) == n_ctx + 4 + 1 + len(target_text) and prompt.dropped_turns == 0
    text_rows = prompt.mask[:, 32]
    assert prompt.tokens[text_rows, 32].tolist() == ctx_text + target_text
    audio = slice(n_ctx, n_ctx + 5)
    assert not bool(text_rows[audio].any()) and bool(prompt.mask[audio, :32].all())
    assert np.array_equal(prompt.tokens[n_ctx : n_ctx + 4, :32].numpy(), ctx)
    assert bool((prompt.tokens[n_ctx + 4, :32] == 0).all())  # the EOS frame
    assert not bool(prompt.mask[text_rows, :32].any())


def test_oldest_turns_are_dropped_first_and_counted() -> None:
    turns = [Segment(text=f"turn {i}", speaker=i % 2, codes=codes(30, i)) for i in range(4)]
    row_counts = [len(TOK.encode_turn(t.text, t.speaker)) + 31 for t in turns]
    target = len(TOK.encode_turn("now", 0))
    # Room for the last two turns only.
    max_positions = target + 100 + row_counts[2] + row_counts[3]
    prompt = build_prompt(TOK, "now", 0, turns, max_frames=100, max_positions=max_positions)
    assert prompt.dropped_turns == 2
    expected = build_prompt(TOK, "now", 0, turns[2:], max_frames=100, max_positions=max_positions)
    assert torch.equal(prompt.tokens, expected.tokens) and torch.equal(prompt.mask, expected.mask)
    assert len(prompt) + 100 <= max_positions
    fits = build_prompt(TOK, "now", 0, turns, max_frames=100, max_positions=max_positions + row_counts[1])
    assert fits.dropped_turns == 1


def test_a_required_turn_is_kept_while_the_oldest_others_are_dropped() -> None:
    turns = [Segment(text=f"turn {i}", speaker=i % 2, codes=codes(30, i)) for i in range(4)]
    turns[0].required = True  # a voice's reference, oldest of all
    row_counts = [len(TOK.encode_turn(t.text, t.speaker)) + 31 for t in turns]
    target = len(TOK.encode_turn("now", 0))
    # Room for two turns: the required one and the newest.
    max_positions = target + 100 + row_counts[0] + row_counts[3]
    prompt = build_prompt(TOK, "now", 0, turns, max_frames=100, max_positions=max_positions)
    assert prompt.dropped_turns == 2
    expected = build_prompt(TOK, "now", 0, [turns[0], turns[3]], max_frames=100, max_positions=max_positions)
    assert torch.equal(prompt.tokens, expected.tokens) and torch.equal(prompt.mask, expected.mask)


def test_a_required_turn_that_cannot_fit_raises_instead_of_being_dropped() -> None:
    reference = Segment(text="a reference", speaker=0, codes=codes(60), required=True)
    newer = Segment(text="newer", speaker=1, codes=codes(5, 1))
    rows = len(TOK.encode_turn(reference.text, 0)) + 61
    target = len(TOK.encode_turn("now", 0))
    fits = build_prompt(TOK, "now", 0, [reference, newer], max_frames=100, max_positions=target + 100 + rows)
    assert fits.dropped_turns == 1  # the newer, unrequired turn went; the reference stayed
    with pytest.raises(PromptTooLongError, match="reference takes"):
        build_prompt(TOK, "now", 0, [reference, newer], max_frames=100, max_positions=target + 100 + rows - 1)
    unrequired = Segment(text=reference.text, speaker=0, codes=reference.codes)
    dropped = build_prompt(TOK, "now", 0, [unrequired], max_frames=100, max_positions=target + 100 + rows - 1)
    assert dropped.dropped_turns == 1 and len(dropped) == target


def test_text_that_cannot_fit_raises_prompt_too_long() -> None:
    with pytest.raises(PromptTooLongError, match="positions"):
        build_prompt(TOK, "x" * 500, 0, [], max_frames=1600, max_positions=2048)
    assert len(build_prompt(TOK, "x" * 400, 0, [], max_frames=1600, max_positions=2048)) == 405


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((3, 8), int),
        np.full((2, 32), 2048),
        np.full((2, 32), -1),
        np.zeros((2, 32), np.float32) + 0.5,
    ],
)
def test_invalid_context_codes_are_value_errors(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="codes"):
        build_prompt(TOK, "t", 0, [Segment(text="c", speaker=0, codes=bad)], max_frames=5)


def test_context_audio_must_be_encoded_first() -> None:
    with pytest.raises(ValueError, match="encode"):
        build_prompt(
            TOK, "t", 0, [Segment(text="c", speaker=0, audio=np.zeros(100, np.float32))], max_frames=5
        )


def test_context_codes_that_arrive_read_only_are_copied_without_a_warning() -> None:
    """Arrays that crossed Ray are read-only: the prompt keeps its own copy, and torch has nothing
    to warn about."""
    import warnings

    ctx = codes(3)
    ctx.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prompt = build_prompt(TOK, "target", 0, [Segment(text="ctx", speaker=1, codes=ctx)], max_frames=10)
    start = len(TOK.encode_turn("ctx", 1))
    assert torch.equal(prompt.tokens[start : start + 3, :32], torch.from_numpy(ctx.copy()))
