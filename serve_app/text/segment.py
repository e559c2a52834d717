"""Long text → segments CSM can speak one at a time, split at sentence or clause boundaries.

CSM reads a prompt of at most 2048 positions (text tokens, context audio frames and the frames it
generates), so long text is spoken as a series of segments of at most `max_chars` characters, each
generated with the ones before it as context. Segments end at sentence boundaries where they can
(several short sentences share one segment), else at a clause boundary (`,` `;` `:` or a dash),
else between words. Break tags (`serve_app.text.breaks`) end a segment and become pauses.

`TextFeed` does this incrementally, for text that arrives in pieces (a language model writing): a
boundary counts only once it is certain (a sentence end once the next sentence has started or a
space follows it), `flush()` and `close()` release whatever has arrived. `split_script` runs the same
rules over a whole text. Sentence boundaries come from Koehn and Schroeder's splitter (the Moses
rules, with each language's non-breaking prefixes: "Dr. Smith" and "U.S. law" stay whole).
Offsets always refer to the text as given, so each segment knows the span of input it speaks.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from serve_app.text.breaks import find_break, pending_tag_start

__all__ = ["Pause", "ScriptItem", "SegmentPolicy", "TextFeed", "Utterance", "split_script"]

_CLAUSE_END = re.compile(r"[,;:\u2014\u2013](?=\s)|[ \t]-(?=\s)")
# Full stops and question and exclamation marks the sentence splitter does not know: Chinese and
# Japanese ones (no space follows them) and the Arabic question mark. Such an end is certain once any
# character follows it.
_WIDE_END = re.compile(r"[\u3002\uff0e\uff01\uff1f\u061f][\"'\u201d\u2019\u300d\u300f\uff09)\]]*")
# A line that starts a Markdown block (a list item, heading, quote or table row) starts a sentence:
# the line before it has ended, whatever its punctuation. `_ITEM_NUMBER` is a numbered item's marker,
# whose full stop the sentence splitter would otherwise take for the end of the line before.
_BLOCK_START = re.compile(r"^[ \t]{0,3}(?:[-*+]|\d{1,3}[.)]|#{1,6}|>)(?:[ \t]+|$)|^[ \t]*\|", re.MULTILINE)
_ITEM_NUMBER = re.compile(r"^([ \t]{0,3}\d{1,3})\.(?=[ \t]|$)", re.MULTILINE)
# A streamed sentence end followed by a space is certain if a capital letter or a digit there would
# start a sentence, and the sentence could hardly go on in lower case: an abbreviation ("9 a.m. today"),
# an ellipsis ("Wait... what?") or a closing quote or bracket ('"Sure?" she asked') waits for the next word.
_SENTENCE_TAIL = re.compile(r"(?:^|\s)[^\s.]+[.!?]\s+$")
_LONE_NEWLINE = re.compile(r"(?<!\n)\n(?!\n)")
_LOOKAHEAD = 100  # characters past max_chars the sentence splitter sees, to confirm a boundary


@dataclass(frozen=True)
class SegmentPolicy:
    """How text is cut. `min_clause_chars`: streamed text that has no sentence end yet starts being
    spoken at a clause boundary once at least this much of it is waiting."""

    max_chars: int = 280
    min_clause_chars: int = 40
    language: str = "en"

    def __post_init__(self) -> None:
        if self.max_chars < 20:
            raise ValueError("max_chars must be >= 20")
        if self.min_clause_chars < 1:
            raise ValueError("min_clause_chars must be >= 1")


@dataclass(frozen=True)
class Utterance:
    """Text to speak: `text` is the input's `[start, end)`, without surrounding whitespace."""

    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Pause:
    """Silence from a break tag at the input's `[start, end)`."""

    start: int
    end: int
    ms: int


ScriptItem = Utterance | Pause


@functools.cache
def _splitter(language: str):  # sentence_splitter has no type hints
    from sentence_splitter import SentenceSplitter

    return SentenceSplitter(language=language)


def _sentence_ends(text: str, complete: bool, language: str) -> list[int]:
    """Offsets just past each certain sentence end in `text` (the last one too when `complete`);
    a Markdown block's first line starts a sentence (`_BLOCK_START`)."""
    # A marker that ends streamed text may still grow into a word: "\n1." into "1.5", "\n-" into "-5".
    markers = [
        (m.start(), m.end())
        for m in _BLOCK_START.finditer(text)
        if complete or m.end() < len(text) or text[m.end() - 1] in " \t"
    ]
    prepared = _ITEM_NUMBER.sub(r"\1)", text)  # "\n2. Call" is an item, not "... 2." ending a sentence
    prepared = _LONE_NEWLINE.sub(" ", prepared)  # hard-wrapped lines are not sentences; same length
    confirm_tail = not complete and _SENTENCE_TAIL.search(prepared) is not None
    if confirm_tail:  # the probes: "No. 5" and "pp. 12" are not sentence ends, "Dr. Smith" neither
        probes = ("A", "1") if prepared.rstrip().endswith(".") else ("A",)
        confirm_tail = all(_splitter(language).split(prepared + probe)[-1] == probe for probe in probes)
    sentences = _splitter(language).split(prepared)
    ends: list[int] = []
    pos = 0
    for sentence in sentences:
        words = sentence.split()
        if not words:
            continue
        found = re.compile(r"\s+".join(map(re.escape, words))).search(prepared, pos)
        if found is None:  # the splitter rewrote something: trust nothing past here
            break
        pos = found.end()
        ends.append(pos)
    if not complete and not confirm_tail:
        ends = ends[:-1]  # the last sentence may still be growing
    # A block's marker proves the line before it ended (streamed text too); no end falls inside a marker.
    ends = [end for end in ends if not any(start < end < stop for start, stop in markers)]
    ends += [m.end() for m in _WIDE_END.finditer(text) if complete or m.end() < len(text)]
    return sorted(set(ends) | {start for start, _ in markers if text[:start].strip()})


def _last_clause_end(text: str, limit: int, minimum: int = 1) -> int | None:
    ends = [m.end() for m in _CLAUSE_END.finditer(text) if minimum <= m.end() <= limit]
    return ends[-1] if ends else None


class TextFeed:
    """Text arriving in pieces → utterances and pauses, each released once its end is certain."""

    def __init__(self, policy: SegmentPolicy | None = None) -> None:
        self.policy = policy or SegmentPolicy()
        self.text = ""
        self._cursor = 0  # everything before it has been handed out
        self._flushed = 0  # text before this offset may be spoken without a boundary
        self.closed = False

    # -- input ----------------------------------------------------------------------------------
    def push(self, piece: str) -> None:
        if self.closed:
            raise ValueError("no text can follow close")
        self.text += piece

    def flush(self) -> None:
        """Speak everything received so far, boundary or not."""
        self._flushed = len(self.text)

    def close(self) -> None:
        """No more text: the rest is spoken."""
        self.closed = True
        self._flushed = len(self.text)

    # -- output ---------------------------------------------------------------------------------
    @property
    def pending(self) -> str:
        """Received text not yet handed out."""
        return self.text[self._cursor :]

    @property
    def exhausted(self) -> bool:
        """Closed and everything handed out."""
        return self.closed and not self.text[self._cursor :].strip()

    @property
    def flushed(self) -> bool:
        """Everything up to the last flush has been handed out, but for an unfinished break tag at
        its end ("... <br"): that waits for the rest of the tag, and the flush is answered meanwhile."""
        end = self._flushed
        partial = None if self.closed else pending_tag_start(self.text, self._cursor)
        if partial is not None:
            end = min(end, partial)
        return self._cursor >= end or not self.text[self._cursor : end].strip()

    def next_item(self) -> ScriptItem | None:
        """The next utterance or pause whose end is certain, or None until more text (or a flush)
        comes. Raises `BreakTagError` for a malformed break tag."""
        while True:
            text = self.text
            cursor = len(text) - len(text[self._cursor :].lstrip())
            self._cursor = cursor
            if cursor >= len(text):
                return None
            window_end = min(len(text), cursor + self.policy.max_chars + _LOOKAHEAD)
            tag = find_break(text, cursor, window_end, complete=self.closed)
            if tag is not None and tag.start == cursor:
                self._cursor = tag.end
                return Pause(tag.start, tag.end, tag.ms)
            limit, complete = window_end, window_end == len(text) and self.closed
            if tag is not None:
                limit, complete = tag.start, True
            elif cursor < self._flushed <= limit:
                limit, complete = self._flushed, True
            partial = None if self.closed else pending_tag_start(text, cursor)
            if partial is not None and partial < limit:
                limit, complete = partial, complete and self._flushed >= partial
            cut = self._cut(cursor, limit, complete)
            if cut is None or cut <= cursor:
                return None
            self._cursor = cut
            raw = text[cursor:cut]
            spoken = raw.strip()
            if spoken:
                start = cursor + (len(raw) - len(raw.lstrip()))
                return Utterance(start, start + len(spoken), spoken)

    def _cut(self, cursor: int, limit: int, complete: bool) -> int | None:
        """Where the segment starting at `cursor` ends (`text[cursor:limit]` is what may be used;
        `complete`: nothing more will join it), or None to wait for more text."""
        policy = self.policy
        candidate = self.text[cursor:limit]
        if not candidate.strip():
            return limit if complete else None
        if complete and len(candidate.rstrip()) <= policy.max_chars:
            return limit
        fitting = [end for end in _sentence_ends(candidate, complete, policy.language) if end <= policy.max_chars]
        if fitting:
            return cursor + fitting[-1]
        if complete or len(candidate) > policy.max_chars:  # too long for one segment: cut inside it
            cut = _last_clause_end(candidate, policy.max_chars)
            if cut is None:
                space = candidate.rfind(" ", 1, policy.max_chars + 1)
                cut = space if space > 0 else policy.max_chars
            return cursor + cut
        # Streaming and no sentence has ended: start at a clause boundary rather than wait.
        cut = _last_clause_end(candidate, len(candidate), policy.min_clause_chars)
        return None if cut is None else cursor + cut


def split_script(text: str, policy: SegmentPolicy | None = None) -> list[ScriptItem]:
    """A whole text as utterances and pauses (raises `BreakTagError` for a malformed break tag)."""
    feed = TextFeed(policy)
    feed.push(text)
    feed.close()
    items: list[ScriptItem] = []
    while (item := feed.next_item()) is not None:
        items.append(item)
    return items
