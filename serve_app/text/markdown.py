"""Markdown, as a language model writes it, turned into what a listener should hear.

Voice agents speak their language model's replies, and those come with Markdown: `**bold**`,
headings, bullet and numbered lists, `inline code`, links, tables and emoji. Read raw, the markers are
spoken or garbled ("asterisk asterisk"), a heading runs into the sentence after it, and a list's
items run together. So the normalizer first keeps the words and drops the markup:

- emphasis (`**`, `__`, `*`, `_`, `~~`) and inline code lose their markers; links and images keep
  their text (`[the docs](https://…)` → "the docs");
- a heading, list item, quote or table row is a sentence of its own (a full stop is added where it
  has no closing punctuation), and so is a line before one of them or before a blank line (a
  paragraph's end); list bullets, item numbers and task boxes, quote marks, table rules, heading
  underlines, horizontal rules and code fences go;
- emoji and their joiners go (the model has no voice for them).

Plain text passes through unchanged: every rule needs Markdown's own syntax (a marker at the start
of a line followed by a space, paired emphasis markers hugging words), so `2 * 3`, `snake_case`
and "-5 degrees" are left alone.
"""

from __future__ import annotations

import re

__all__ = ["speakable_markdown"]

_FENCE_RE = re.compile(r"^\s*(```|~~~).*$")
_RULE_RE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$|^\s*={3,}\s*$")  # "---", "===" under a heading
_TABLE_RULE_RE = re.compile(r"^\s*(?:\|\s*)?:?-{3,}:?(?:\s*\|\s*:?-{3,}:?)*\s*(?:\|\s*)?$")
_HEADING_RE = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)(\s+#+)?\s*$")
_QUOTE_RE = re.compile(r"^\s*(>\s?)+")
_BULLET_RE = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+(?:\[[ xX]\]\s+)?(?=\S)")  # "- [x] done"
_IMAGE_RE = re.compile(r"!\[([^\][]*)\]\([^)]*\)")
_LINK_RE = re.compile(r"\[([^\][]+)\]\([^)]*\)")
_CODE_RE = re.compile(r"`+([^`]+?)`+")
_STRONG_RE = re.compile(r"(\*\*|__)(?=\S)((?:(?!\1).)+?)(?<=\S)\1")
_EMPHASIS_RE = re.compile(r"(?<![\w*])\*(?=\S)([^*]+?)(?<=\S)\*(?![\w*])|(?<![\w_])_(?=\S)([^_]+?)(?<=\S)_(?![\w_])")
_STRIKE_RE = re.compile(r"~~(?=\S)((?:(?!~~).)+?)(?<=\S)~~")
_STRAY_MARKERS_RE = re.compile(r"\*{2,}|(?<!\w)_{2,}|_{2,}(?!\w)|~~|`+")
_EMOJI_RE = re.compile(
    "[\U0001f000-\U0001faff\U00002600-\U000027bf\U0001f1e6-\U0001f1ff\ufe0f\u200d\u20e3\U000e0020-\U000e007f"
    "\u231a\u231b\u23e9-\u23f3\u23f8-\u23fa\u2b05-\u2b07\u2b1b\u2b1c\u2b50\u2b55\u25aa\u25ab\u25b6\u25c0"
    "\u25fb-\u25fe\u2934\u2935\u3030\u303d\u3297\u3299\u203c\u2049]"  # ⏳ ⭐ ▶️ ‼️ ...
)
_CLOSING = (".", "!", "?", ":", ";", ",", "\u2026")


def _inline(text: str) -> str:
    text = _IMAGE_RE.sub(r"\1", text)
    text = _LINK_RE.sub(r"\1", text)
    text = _CODE_RE.sub(r"\1", text)
    text = _STRONG_RE.sub(r"\2", text)
    text = _EMPHASIS_RE.sub(lambda m: m.group(1) or m.group(2), text)
    text = _STRIKE_RE.sub(r"\1", text)
    text = _EMOJI_RE.sub("", text)
    return _STRAY_MARKERS_RE.sub("", text)


def _sentence(line: str) -> str:
    """A heading, item or row read as a sentence of its own."""
    line = line.rstrip()
    return line if not line or line.endswith(_CLOSING) else line + "."


def _table_row(line: str) -> str | None:
    """`| a | b |` → "a, b" (None: not a table row)."""
    stripped = line.strip()
    if not (stripped.startswith("|") and stripped.endswith("|") and len(stripped) > 1):
        return None
    cells = [cell.strip() for cell in stripped[1:-1].split("|")]
    return ", ".join(cell for cell in cells if cell)


def speakable_markdown(text: str) -> str:
    """`text` with Markdown's markup dropped and its structure kept as sentences."""
    lines: list[tuple[str, bool]] = []  # (line, whether it is a heading, item, quote or row)
    kept = False  # whether the line before was kept (not a fence or rule)
    for line in text.split("\n"):
        if _FENCE_RE.match(line) or _RULE_RE.match(line) or _TABLE_RULE_RE.match(line):
            if kept and _RULE_RE.match(line) and lines[-1][0].strip():  # the underline of a heading
                lines[-1] = (_sentence(lines[-1][0]), True)
            kept = False
            continue
        kept = True
        if (row := _table_row(line)) is not None:
            lines.append((_sentence(_inline(row)), True))
            continue
        structural = False
        if heading := _HEADING_RE.match(line):
            line, structural = heading.group(1), True
        if quote := _QUOTE_RE.match(line):
            line, structural = line[quote.end():], True
        if bullet := _BULLET_RE.match(line):
            line, structural = line[bullet.end():], True
        line = _inline(line)
        lines.append((_sentence(line) if structural else line, structural))
    # A line that runs into a heading, item, quote or row, or that ends a paragraph (a blank line
    # before more text), ends a sentence.
    last = max((i for i, (line, _) in enumerate(lines) if line.strip()), default=-1)
    return "\n".join(
        _sentence(line) if i < last and (lines[i + 1][1] or not lines[i + 1][0].strip()) else line
        for i, (line, _) in enumerate(lines)
    )
