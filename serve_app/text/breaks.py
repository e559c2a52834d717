"""Inline pauses: `<break time="500ms"/>` (SSML's tag, `time` in ms or s) in the text to speak.

A break ends the segment before it and is rendered as that much silence before the next one. A bare
`<break/>` pauses for `DEFAULT_BREAK_MS`. Anything else that starts with `<break` is an error, so a
typo (or a tag the text never closes) is reported instead of being read aloud.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_BREAK_MS", "MAX_BREAK_MS", "BreakTag", "BreakTagError", "find_break", "pending_tag_start"]

DEFAULT_BREAK_MS = 500
MAX_BREAK_MS = 10_000

_TAG_START = re.compile(r"<break\b", re.IGNORECASE)
_TAG = re.compile(
    r"""<break(?:\s+time\s*=\s*(?P<q>["']?)\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s)\s*(?P=q))?\s*/?\s*>""",
    re.IGNORECASE,
)
_PREFIX = "<break"


class BreakTagError(ValueError):
    """A `<break ...>` tag that cannot be read, or a pause over `MAX_BREAK_MS`."""


@dataclass(frozen=True)
class BreakTag:
    start: int  # offset of '<' in the text
    end: int  # offset just past '>'
    ms: int


def find_break(
    text: str, start: int = 0, end: int | None = None, *, complete: bool = False
) -> BreakTag | None:
    """The first break tag that starts in `text[start:end]`; raises `BreakTagError` for a malformed one.

    A tag whose `>` has not come yet is not returned (see `pending_tag_start`), unless the text is
    `complete`: then none will come, and the tag is malformed rather than words to read aloud."""
    end = len(text) if end is None else end
    opened = _TAG_START.search(text, start)  # not bounded by `end`: a tag is read whole or not at all
    if opened is None or opened.start() >= end:
        return None
    close = text.find(">", opened.start())
    if close < 0:
        if complete:
            raise BreakTagError(
                f"unclosed break tag {text[opened.start() : opened.start() + 80]!r} at character "
                f'{opened.start()}: end it with ">", as in <break time="500ms"/>'
            )
        return None
    match = _TAG.fullmatch(text, opened.start(), close + 1)
    tag = text[opened.start() : close + 1]
    if match is None:
        raise BreakTagError(
            f"unreadable break tag {tag[:80]!r} at character {opened.start()}: "
            'write <break time="500ms"/> or <break time="1.5s"/>'
        )
    ms = DEFAULT_BREAK_MS
    if match.group("value") is not None:
        value = float(match.group("value")) * (1000 if match.group("unit").lower() == "s" else 1)
        if value > MAX_BREAK_MS:  # checked before round(): a value of hundreds of digits is infinite
            raise BreakTagError(
                f"break tag {tag[:80]!r} at character {opened.start()} is over the {MAX_BREAK_MS} ms limit"
            )
        ms = round(value)
    return BreakTag(opened.start(), close + 1, ms)


def pending_tag_start(text: str, start: int = 0) -> int | None:
    """Where an unfinished break tag begins in streamed `text` (more text may close it), or None: a
    `<break` no `>` has followed yet, or the start of one at the very end ("<bre"). Text from there
    must not be spoken yet: the rest of the tag may still arrive."""
    after_close = max(start, text.rfind(">", start) + 1)  # any tag opened before it is closed
    opened = _TAG_START.search(text, after_close)
    if opened is not None:
        return opened.start()
    lt = text.rfind("<", start)
    if lt < 0 or ">" in text[lt:]:
        return None
    tail = text[lt:].lower()
    if _PREFIX.startswith(tail) or tail.startswith(_PREFIX):
        return lt
    return None
