"""Fractions ("3/4", "1 1/2", "¾") and ratings ("4.5/5").

A slash between two numbers is read as a fraction only where it is a proper one with a small
denominator; dates ("due 3/15") are read before these rules, so what is left is a fraction or as
written.
"""

from __future__ import annotations

import re

from num2words import num2words

from serve_app.text.normalize.numbers import NUM, cardinal

__all__ = ["FRACTION", "MIXED_FRACTION", "RATING", "VULGAR", "VULGAR_FRACTIONS"]

_FRACTIONS = {2: ("half", "halves"), 4: ("quarter", "quarters")}  # others: "third", "thirds", ...
_RATING_RE = re.compile(  # "4.5/5", "4/5 stars" (a plain "4/5" is a fraction)
    r"(?<![\w./])(\d{1,2}\.\d|\d{1,2}(?=/(?:5|10) stars?\b))/(5|10)(?![\w/]|\.\d)"
)
_FRACTION_RE = re.compile(r"(?<![\w/.])(\d{1,2})/(\d{1,2})(?![\w/]|\.\d)")
_MIXED_FRACTION_RE = re.compile(r"(?<![\w/.])(" + NUM + r") (\d{1,2})/(\d{1,2})(?![\w/]|\.\d)")  # "1 1/2"
VULGAR_FRACTIONS = {
    "½": (1, 2), "⅓": (1, 3), "⅔": (2, 3), "¼": (1, 4), "¾": (3, 4), "⅕": (1, 5), "⅖": (2, 5), "⅗": (3, 5),
    "⅘": (4, 5), "⅙": (1, 6), "⅚": (5, 6), "⅛": (1, 8), "⅜": (3, 8), "⅝": (5, 8), "⅞": (7, 8),
}
_VULGAR_RE = re.compile(r"(?<![\w.])(?:(" + NUM + r") ?)?([" + "".join(VULGAR_FRACTIONS) + r"])")  # "1½", "¾"


def _fraction(m: re.Match[str]) -> str:
    """Proper fractions in words ("3/4" → "three quarters"); "24/7" as said; others as they were."""
    numerator, denominator = int(m.group(1)), int(m.group(2))
    if (numerator, denominator) == (24, 7):
        return "twenty-four seven"
    if not 0 < numerator < denominator <= 16:
        return m.group(0)
    return _fraction_words(numerator, denominator)


def _fraction_words(numerator: int, denominator: int) -> str:
    one, many = _FRACTIONS.get(denominator) or (
        num2words(denominator, to="ordinal"), num2words(denominator, to="ordinal") + "s"
    )
    return f"{cardinal(numerator)} {one if numerator == 1 else many}"


def _mixed_fraction(m: re.Match[str]) -> str:
    """"1 1/2" → "one and one half" (not a proper fraction after the number: as it was)."""
    numerator, denominator = int(m.group(2)), int(m.group(3))
    if not 0 < numerator < denominator <= 16:
        return m.group(0)
    return f"{cardinal(m.group(1))} and {_fraction_words(numerator, denominator)}"


def _vulgar(m: re.Match[str]) -> str:
    """"½" → "one half", "1¼" → "one and one quarter"."""
    fraction = _fraction_words(*VULGAR_FRACTIONS[m.group(2)])
    return f"{cardinal(m.group(1))} and {fraction}" if m.group(1) else fraction


RATING = (_RATING_RE, r"\1 out of \2")
MIXED_FRACTION = (_MIXED_FRACTION_RE, _mixed_fraction)
VULGAR = (_VULGAR_RE, _vulgar)
FRACTION = (_FRACTION_RE, _fraction)
