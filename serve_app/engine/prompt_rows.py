"""Joining prompts as the host hands them to the device: packed rows built with numpy.

The engine's loop thread shares its process (and the GIL) with the replica's event loop, and every
torch call gives the GIL up and must take it back, which behind a busy event loop costs far more
than the call. So what an admission sends is built here in numpy, a few calls whatever the number
of prompts, into one int64 array that reaches the device in one copy; the device side unpacks it
with views (`unpack_rows`), inside the captured graphs where there are any.

A packed prompt row (`ROW_COLUMNS` int64) is one backbone input row: its 33 tokens, their 33 mask
flags, its position (-1: padding, which writes and reads nothing) and the cache slot it belongs to.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import numpy as np
import torch

from serve_app.engine.sequence import Sequence
from serve_app.engine.types import NUM_CODEBOOKS

PREFILL_WIDTHS = (16, 32, 64, 128, 256, 512, 1024, 2048)
"""Prompt widths (rows per prompt, padded) of the captured prefills."""
PREFILL_TOKEN_BUDGET = 8192
"""Largest batch x width of a captured prefill: bigger admissions are split into several replays."""
PROMPT_ROW_BUCKETS = (16, 32, 64, 128, 256)
"""Prompt rows (padded) that a decode step can carry in its backbone pass (`prompts_in_step`);
admissions with more go through a prefill of their own."""

TOKEN_COLUMNS = NUM_CODEBOOKS + 1
POSITION_COLUMN = 2 * TOKEN_COLUMNS
SLOT_COLUMN = POSITION_COLUMN + 1
ROW_COLUMNS = SLOT_COLUMN + 1
"""Columns of a packed prompt row: tokens, mask, position, slot."""
ARMING_COLUMNS = 5
"""Columns of `arming_rows` before the last prompt row's tokens and mask."""


@dataclass(frozen=True)
class PrefillGroup:
    """Sequences prefilled together: `batch` rows (a captured batch size) of `width` prompt rows."""

    seqs: list[Sequence]
    batch: int
    width: int


def prefill_groups(
    seqs: Seq[Sequence], batches: Seq[int], widths: Seq[int], budget: int
) -> list[PrefillGroup]:
    """Split prompts into groups that each fit one captured prefill (batch bucket x width bucket
    within `budget` tokens), longest first, so short prompts are not padded to a long one's width.
    Every sequence must have at least 2 prompt rows (the last row is the first step's input)."""
    pending = sorted(seqs, key=lambda s: s.prompt_len, reverse=True)
    groups: list[PrefillGroup] = []
    while pending:
        width = next(w for w in widths if w >= pending[0].prompt_len - 1)
        fits = [b for b in batches if b * width <= budget] or [batches[0]]  # one prompt always fits
        count = min(len(pending), fits[-1])
        batch = next(b for b in batches if b >= count)
        groups.append(PrefillGroup(pending[:count], batch, width))
        pending = pending[count:]
    return groups


def padding_rows(*shape: int) -> np.ndarray:
    """Packed rows of `shape` that are all padding: position -1, slot 0, no tokens."""
    rows = np.zeros((*shape, ROW_COLUMNS), np.int64)
    rows[..., POSITION_COLUMN] = -1
    return rows


def _body(seqs: Seq[Sequence]) -> tuple[np.ndarray, np.ndarray]:
    """Every prompt row but the last of each sequence, packed and in order, and each sequence's
    count of them. The last row is the first decode step's input (`arming_rows`)."""
    counts = np.array([s.prompt_len - 1 for s in seqs], np.int64)
    total = int(counts.sum())
    rows = np.empty((total, ROW_COLUMNS), np.int64)
    rows[:, :TOKEN_COLUMNS] = np.concatenate([s.tokens.numpy()[:-1] for s in seqs])
    rows[:, TOKEN_COLUMNS:POSITION_COLUMN] = np.concatenate([s.mask.numpy()[:-1] for s in seqs])
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    rows[:, POSITION_COLUMN] = np.arange(total) - starts
    rows[:, SLOT_COLUMN] = np.repeat([s.slot for s in seqs], counts)
    return rows, counts


def prefill_rows(seqs: Seq[Sequence], batch: int, width: int) -> np.ndarray:
    """(batch, width, ROW_COLUMNS): prompt b's rows (all but its last) left-aligned in row b,
    right-padded; rows past the prompts are padding in slot 0."""
    body, counts = _body(seqs)
    out = padding_rows(batch, width)
    out[np.repeat(np.arange(len(seqs)), counts), body[:, POSITION_COLUMN]] = body
    out[: len(seqs), :, SLOT_COLUMN] = np.array([s.slot for s in seqs], np.int64)[:, None]
    return out


def flat_rows(seqs: Seq[Sequence], rows: int) -> np.ndarray:
    """(rows, ROW_COLUMNS): every prompt's rows (all but its last) one after another, then padding."""
    body, _ = _body(seqs)
    if len(body) > rows:
        raise ValueError(f"{len(body)} prompt rows do not fit {rows}")
    out = padding_rows(rows)
    out[: len(body)] = body
    return out


def prompt_row_count(seqs: Seq[Sequence]) -> int:
    """Rows that `flat_rows` packs for these sequences (their prompts' rows but the last)."""
    return sum(s.prompt_len - 1 for s in seqs)


def unpack_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed rows (..., ROW_COLUMNS) on the device → tokens, mask (bool) (..., 33), positions (...)
    and each row's slot (...), each contiguous (a few small kernels, captured with the graph)."""
    tokens = rows[..., :TOKEN_COLUMNS].contiguous()
    mask = rows[..., TOKEN_COLUMNS:POSITION_COLUMN].bool()
    return tokens, mask, rows[..., POSITION_COLUMN].contiguous(), rows[..., SLOT_COLUMN].contiguous()


def arming_rows(seqs: Seq[Sequence]) -> torch.Tensor:
    """What arming the joining sequences' slots needs, as one (J, 5 + 2 * 33) int64 host tensor, so
    it reaches the device in one copy: slot, the last prompt row's position, seed, temperature (its
    float32 bits), top-k, then the last prompt row's tokens and mask."""
    rows = np.empty((len(seqs), ARMING_COLUMNS + 2 * TOKEN_COLUMNS), np.int64)
    rows[:, 0] = [s.slot for s in seqs]
    rows[:, 1] = [s.prompt_len - 1 for s in seqs]
    rows[:, 2] = [s.seed for s in seqs]
    rows[:, 3] = np.array([s.request.sampling.temperature for s in seqs], np.float32).view(np.int32)
    rows[:, 4] = [s.request.sampling.top_k for s in seqs]
    rows[:, ARMING_COLUMNS : ARMING_COLUMNS + TOKEN_COLUMNS] = [s.tokens.numpy()[-1] for s in seqs]
    rows[:, ARMING_COLUMNS + TOKEN_COLUMNS :] = [s.mask.numpy()[-1] for s in seqs]
    return torch.from_numpy(rows)
