"""A pronunciation lexicon: words replaced by how they should be spoken ("SQL" → "sequel").

Applied after normalization, to whole words only, case-sensitively (acronyms and names differ from
common words by their case), in one pass: a replacement is never itself replaced again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["MAX_ENTRIES", "Lexicon", "LexiconError"]

MAX_ENTRIES = 1000
MAX_WORD_CHARS = 100
MAX_SPOKEN_CHARS = 400


class LexiconError(ValueError):
    """An entry that cannot be used (empty, too long, not valid Unicode, or too many entries)."""


def _is_utf8(text: str) -> bool:
    """False for text holding a lone surrogate (JSON's escape "\\ud800" decodes to one): no prompt
    could be encoded from it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Lexicon:
    def __init__(self, entries: Mapping[str, str] | None = None) -> None:
        entries = dict(entries or {})
        if len(entries) > MAX_ENTRIES:
            raise LexiconError(f"a lexicon holds at most {MAX_ENTRIES} entries, got {len(entries)}")
        for word, spoken in entries.items():
            if not word.strip() or len(word) > MAX_WORD_CHARS:
                raise LexiconError(f"lexicon word {word[:40]!r} must be 1 to {MAX_WORD_CHARS} characters")
            if len(spoken) > MAX_SPOKEN_CHARS:
                raise LexiconError(f"spoken form of {word[:40]!r} is over {MAX_SPOKEN_CHARS} characters")
            if not _is_utf8(word) or not _is_utf8(spoken):
                raise LexiconError(f"lexicon entry {word[:40]!r} holds a lone surrogate, which is not text")
        self.entries = {word.strip(): spoken for word, spoken in entries.items()}
        self._pattern = (
            re.compile(
                "|".join(
                    r"(?<!\w)" + re.escape(word) + r"(?!\w)"
                    for word in sorted(self.entries, key=len, reverse=True)  # longest first: "New York City"
                )
            )
            if self.entries
            else None
        )

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lexicon) and other.entries == self.entries

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.entries.items())))

    def merged(self, overrides: Mapping[str, str] | None) -> Lexicon:
        """This lexicon with `overrides` added (their entries win)."""
        if not overrides:
            return self
        return Lexicon({**self.entries, **overrides})

    def apply(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self.entries[m.group(0)], text)
