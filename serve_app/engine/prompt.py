"""Segments → the (rows, 33) token/mask prompt CSM reads, as the original Sesame generator builds it.

Per context turn: one text row per token of BOS "[speaker]text" EOS (text column only), one row
per Mimi frame of its audio (32 audio columns), then an all-zero EOS frame. The target turn is
text rows only; generation continues from its last row.

The prompt plus the requested frames must fit the model's positions; the oldest context turns are
dropped until they do (a `required` turn, a voice's reference, never), and `PromptTooLongError` is
raised when the target text and the required turns cannot fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from serve_app.engine.types import MAX_POSITIONS, NUM_CODEBOOKS, PromptTooLongError, Segment

COLUMNS = NUM_CODEBOOKS + 1
TEXT_COLUMN = NUM_CODEBOOKS


class TurnTokenizer(Protocol):
    def encode_turn(self, text: str, speaker: int) -> list[int]: ...


@dataclass
class Prompt:
    tokens: torch.Tensor  # (rows, 33) long
    mask: torch.Tensor  # (rows, 33) bool
    dropped_turns: int = 0

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def text_rows(token_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(token_ids)
    tokens = torch.zeros(n, COLUMNS, dtype=torch.long)
    mask = torch.zeros(n, COLUMNS, dtype=torch.bool)
    tokens[:, TEXT_COLUMN] = torch.as_tensor(list(token_ids), dtype=torch.long)
    mask[:, TEXT_COLUMN] = True
    return tokens, mask


def audio_rows(codes: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (F, 32) → F + 1 rows: the frames and the all-zero EOS frame after them."""
    # A copy: codes that crossed Ray arrive as read-only arrays, which torch would only wrap (with a warning).
    codes = torch.tensor(codes, dtype=torch.long) if isinstance(codes, np.ndarray) else codes.long().cpu()
    n = codes.shape[0] + 1
    tokens = torch.zeros(n, COLUMNS, dtype=torch.long)
    mask = torch.zeros(n, COLUMNS, dtype=torch.bool)
    tokens[:-1, :NUM_CODEBOOKS] = codes
    mask[:, :NUM_CODEBOOKS] = True
    return tokens, mask


def validate_codes(codes: np.ndarray | torch.Tensor, codebook_size: int = 2048) -> None:
    """Context codes must be (frames, 32) integers in [0, codebook_size)."""
    arr = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes)
    if arr.ndim != 2 or arr.shape[1] != NUM_CODEBOOKS:
        raise ValueError(f"context codes must have shape (frames, {NUM_CODEBOOKS}), got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError("context codes must be integers")
    if arr.size and (arr.min() < 0 or arr.max() >= codebook_size):
        raise ValueError(f"context codes must lie in [0, {codebook_size})")


def segment_rows(tokenizer: TurnTokenizer, segment: Segment) -> tuple[torch.Tensor, torch.Tensor]:
    """A context turn: its text rows, then its audio rows (ending with the EOS frame)."""
    if segment.codes is None:
        raise ValueError("context segment has no codes: encode its audio first")
    validate_codes(segment.codes)
    t_tok, t_mask = text_rows(tokenizer.encode_turn(segment.text, segment.speaker))
    a_tok, a_mask = audio_rows(segment.codes)
    return torch.cat([t_tok, a_tok]), torch.cat([t_mask, a_mask])


def build_prompt(
    tokenizer: TurnTokenizer,
    text: str,
    speaker: int,
    context: Sequence[Segment],
    max_frames: int,
    max_positions: int = MAX_POSITIONS,
) -> Prompt:
    """Rows for `context` turns (oldest first) followed by the target turn's text.

    Drops the oldest turns that are not `required` until prompt rows + `max_frames` <= `max_positions`."""
    target = text_rows(tokenizer.encode_turn(text, speaker))
    budget = max_positions - max_frames
    if target[0].shape[0] > budget:
        raise PromptTooLongError(
            f"the text takes {target[0].shape[0]} positions; with {max_frames} audio frames requested it "
            f"exceeds the model's {max_positions} positions (shorten the text or max_audio_length_ms)"
        )
    turns = [segment_rows(tokenizer, seg) for seg in context]
    kept = [True] * len(turns)
    kept_rows = target[0].shape[0] + sum(t.shape[0] for t, _ in turns)
    droppable = (i for i, seg in enumerate(context) if not seg.required)
    while kept_rows > budget:
        i = next(droppable, None)
        if i is None:
            raise PromptTooLongError(
                f"the voice's reference takes {kept_rows - target[0].shape[0]} positions; with the text's "
                f"{target[0].shape[0]} and {max_frames} audio frames requested it exceeds the model's "
                f"{max_positions} positions (use a shorter reference recording and transcript, or ask for "
                "less audio)"
            )
        kept_rows -= turns[i][0].shape[0]
        kept[i] = False
    parts = [turn for turn, keep in zip(turns, kept) if keep] + [target]
    return Prompt(
        tokens=torch.cat([t for t, _ in parts]),
        mask=torch.cat([m for _, m in parts]),
        dropped_turns=kept.count(False),
    )
