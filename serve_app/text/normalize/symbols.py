"""Symbols and punctuation: the Unicode minus and "~" before a number (rules that the number rules
must see first), the symbols read as words once every rule has run ("%", "&", "°C"), and the
punctuation and spacing the rewrites leave behind.
"""

from __future__ import annotations

import re

__all__ = ["ABOUT", "SYMBOLS", "UNICODE_MINUS", "punctuation", "spacing"]

SYMBOLS = {"&": " and ", "%": " percent", "+/-": " plus or minus ", "\u00b1": " plus or minus ", "+": " plus ",
           "\u00d7": " times ", "\u2192": " to ", "=": " equals ", "@": " at ",
           "°C": " degrees Celsius", "°F": " degrees Fahrenheit", "°": " degrees"}
_UNICODE_MINUS_RE = re.compile(r"\u2212(?=[$€£¥]?\d)")  # "−5" as "-5"
_ABOUT_RE = re.compile(r"~\s?(?=[$€£¥]?\d)")  # "~30 sec" → "about 30 sec"
_REPEAT_RE = re.compile(r"([!?.,;:])\1+")
_MIXED_RE = re.compile(r"[!?]{2,}")
_SPACE_RE = re.compile(r"\s+")
# A space before a mark that ends a word goes ("out , text"), but not after another mark ("e.g., !, @")
# nor before a mark that starts a word (".venv", ".312").
_SPACE_BEFORE_PUNCT_RE = re.compile(r"(?<![\s!?.,;:])\s+([!?.,;:])(?!\w)")


def punctuation(text: str) -> str:
    """A repeated mark once, and a run of "!" and "?" as one of them."""
    text = _REPEAT_RE.sub(r"\1", text)  # "!!!" → "!", "..." → "."
    return _MIXED_RE.sub(lambda m: "?" if "?" in m.group(0) else "!", text)  # "?!?" → "?"


def spacing(text: str) -> str:
    """No space before a mark that ends a word, one space between words, none at either end."""
    text = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)
    return _SPACE_RE.sub(" ", text).strip()


UNICODE_MINUS = (_UNICODE_MINUS_RE, "-")
ABOUT = (_ABOUT_RE, "about ")
