"""Numbers in words, the reading every other rule builds on.

num2words puts commas in its words ("one thousand, two hundred"), which a speech model reads as
pauses, and names no number past 10**306; `cardinal` and `digit_words` are the two ways the other
modules read an amount. The rules here read what is left once money, dates, times and units have
taken theirs: versions, powers, "3x", ordinals, decades, years, decimals and integers.
"""

from __future__ import annotations

import re

from num2words import num2words

__all__ = [
    "DECADE", "DECIMAL", "INTEGER", "LEADING_DOT_DECIMAL", "NUM", "ORDINAL", "POWER", "RATIO", "SCIENTIFIC",
    "SHORT_DECADE", "SUPERSCRIPT", "TIMES", "VERSION", "YEAR", "cardinal", "digit_words",
]

NUM = r"\d{1,3}(?:,\d{3})+|\d+"  # 1,234,567 or 1234567
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
_VERSION_RE = re.compile(r"(?<![\w.])(?:(v)(\d+(?:\.\d+)*)|(\d+(?:\.\d+){2,}))(?![\w]|\.\d)")
_LEADING_DOT_DECIMAL_RE = re.compile(r"(?<![^\s(])\.(\d+)\b(?![.,]\d)")  # "batting .312"
_SUPERSCRIPT_RE = re.compile(r"(?<=[\w)])([⁻]?[⁰¹²³⁴⁵⁶⁷⁸⁹]++)")  # "10²³", "x²"
_SCIENTIFIC_RE = re.compile(r"(?<![\w.#])(\d+(?:\.\d+)?)[eE]([+-]?)(\d+)\b")  # "1.6e-19"
_POWER_RE = re.compile(r"(?<=[\w)])\^(\d+)\b")  # "x^2", "10^8"
_TIMES_RE = re.compile(r"(?<![\w.])(\d+)x(?:(\d+)\b|(?![\w]))")
_RATIO_RE = re.compile(r"(?<![\d:])(\d+):(\d+)(?![\d:])")
_ORDINAL_RE = re.compile(r"\b(" + NUM + r")(st|nd|rd|th)\b", re.IGNORECASE)
_DECADE_RE = re.compile(r"\b(1[1-9]|20)(\d)0'?s\b")
_SHORT_DECADE_RE = re.compile(  # "the '90s", "the 90s", "in her 30s", "highs in the mid-60s"
    r"(?:(?<![\w'])'|(?<=\bthe )|(?<=\bher )|(?<=\bhis )|(?<=\btheir )|(?<=\bmid-)|(?<=\bearly )|(?<=\blate )"
    r"|(?<=\blow )|(?<=\bhigh )|(?<=\bupper ))([2-9]0)s\b"
)
_YEAR_RE = re.compile(r"(?<![\d,.$€£¥-])\b(1[1-9]\d\d|20\d\d)\b(?!\d|[.,]\d|\s*%)")
_DECIMAL_RE = re.compile(r"(?<![\w.])(-?)(" + NUM + r")\.(\d+)\b")
_INTEGER_RE = re.compile(r"(?<![\w.])(-?)(" + NUM + r")\b(?!\.\d)")
# num2words names numbers below 10**306; a longer run of digits is read digit by digit.
_MAX_NAMED_DIGITS = 300
_DIGITS = {str(d): num2words(d) for d in range(10)} | {"+": "plus"}


def cardinal(number: str | int) -> str:
    """Cardinal words without num2words' commas ("one thousand two hundred"), which read as pauses."""
    digits = str(number).replace(",", "")
    if len(digits) > _MAX_NAMED_DIGITS:
        return digit_words(digits)
    return num2words(int(digits)).replace(",", "")


def digit_words(digits: str) -> str:
    """Each character on its own: "305" → "three zero five"."""
    return " ".join(_DIGITS.get(d, d) for d in digits)


def _version(m: re.Match[str]) -> str:
    """"v2.13.0" → "version two point thirteen point zero"; four parts of at most 255 are an IP
    address, read digit by digit ("one nine two dot one six eight dot zero dot one")."""
    parts = (m.group(2) or m.group(3)).split(".")
    if not m.group(1) and len(parts) == 4 and all(len(p) <= 3 and int(p) <= 255 for p in parts):
        return " dot ".join(digit_words(p) for p in parts)
    return ("version " if m.group(1) else "") + " point ".join(cardinal(p) for p in parts)


def _superscript(m: re.Match[str]) -> str:
    """"x²" → " squared", "10²³" → " to the power of 23" (the number read by a later rule)."""
    power = m.group(1).translate(_SUPERSCRIPTS)
    if power in ("2", "3"):
        return " squared" if power == "2" else " cubed"
    return " to the power of " + power.replace("-", "minus ")


def _times(m: re.Match[str]) -> str:
    """"3x faster" → "three times faster"; "1920x1080" → "... by ..."."""
    if m.group(2):
        return f"{cardinal(m.group(1))} by {cardinal(m.group(2))}"
    return f"{cardinal(m.group(1))} times"


def _ordinal(m: re.Match[str]) -> str:
    digits = m.group(1).replace(",", "")
    if len(digits) > _MAX_NAMED_DIGITS:
        return digit_words(digits)
    return num2words(int(digits), to="ordinal").replace(",", "")


def _decade(m: re.Match[str]) -> str:
    year = num2words(int(m.group(1) + m.group(2) + "0"), to="year")
    # "nineteen ninety" → "nineteen nineties", "two thousand" → "two thousands"
    return year[:-1] + "ies" if year.endswith("y") else year + "s"


def _year(m: re.Match[str]) -> str:
    return num2words(int(m.group(1)), to="year")


def _decimal(m: re.Match[str]) -> str:
    sign = "minus " if m.group(1) else ""
    digits = digit_words(m.group(3))
    return f"{sign}{cardinal(m.group(2))} point {digits}"


def _integer(m: re.Match[str]) -> str:
    return ("minus " if m.group(1) else "") + cardinal(m.group(2))


SCIENTIFIC = (
    _SCIENTIFIC_RE,
    lambda m: f"{m.group(1)} times ten to the power of {'minus ' if m.group(2) == '-' else ''}{m.group(3)}",
)
POWER = (
    _POWER_RE,
    lambda m: {"2": " squared", "3": " cubed"}.get(m.group(1), f" to the power of {m.group(1)}"),
)
VERSION = (_VERSION_RE, _version)
RATIO = (_RATIO_RE, lambda m: f"{cardinal(m.group(1))} to {cardinal(m.group(2))}")
SUPERSCRIPT = (_SUPERSCRIPT_RE, _superscript)
TIMES = (_TIMES_RE, _times)
ORDINAL = (_ORDINAL_RE, _ordinal)
DECADE = (_DECADE_RE, _decade)
SHORT_DECADE = (_SHORT_DECADE_RE, lambda m: cardinal(m.group(1))[:-1] + "ies")
YEAR = (_YEAR_RE, _year)
LEADING_DOT_DECIMAL = (_LEADING_DOT_DECIMAL_RE, lambda m: "point " + digit_words(m.group(1)))
DECIMAL = (_DECIMAL_RE, _decimal)
INTEGER = (_INTEGER_RE, _integer)
