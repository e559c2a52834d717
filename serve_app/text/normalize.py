"""Spell out what a speech model reads badly: numbers, money, ordinals, years, abbreviations.

CSM reads raw text; "$3.50" or "5th" tokenize into pieces the model never learned to voice, so the
API rewrites them into words before generation (`normalize: false` opts out). The rules are
deliberately conservative English rules: anything they do not recognise is left untouched.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from num2words import num2words

__all__ = ["normalize_text"]

# Title abbreviations are only expanded before a capitalised word ("Dr. Smith"), so "Dr." ending a
# sentence is left alone; the others are unambiguous anywhere.
_TITLES = {
    "Dr": "Doctor",
    "Mr": "Mister",
    "Mrs": "Missus",
    "Ms": "Miz",
    "Prof": "Professor",
    "St": "Saint",
    "Gen": "General",
    "Capt": "Captain",
    "Sgt": "Sergeant",
    "Lt": "Lieutenant",
}
_ANYWHERE = {
    "e.g.": "for example",
    "i.e.": "that is",
    "etc.": "et cetera",
    "vs.": "versus",
    "approx.": "approximately",
    "Jr.": "Junior",
    "Sr.": "Senior",
}
_SYMBOLS = {"&": " and ", "%": " percent", "+": " plus ", "=": " equals ", "@": " at "}

# symbol → (singular, plural, cent singular, cent plural)
_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "¥": ("yen", "yen", "sen", "sen"),
}
_SCALES = {"thousand", "million", "billion", "trillion"}

_NUM = r"\d{1,3}(?:,\d{3})+|\d+"  # 1,234,567 or 1234567
_TITLE_RE = re.compile(r"\b(" + "|".join(_TITLES) + r")\.\s+(?=[A-Z])")
_ANYWHERE_RE = re.compile("|".join(r"(?<!\w)" + re.escape(k) for k in _ANYWHERE))
_NO_RE = re.compile(r"\b(No|no)\.\s*(?=\d)")
_MONEY_RE = re.compile(r"([$€£¥])\s?(" + _NUM + r")(?:\.(\d+))?(?:\s+(" + "|".join(_SCALES) + r")\b)?")
_ORDINAL_RE = re.compile(r"\b(" + _NUM + r")(st|nd|rd|th)\b", re.IGNORECASE)
_DECADE_RE = re.compile(r"\b(1[1-9]|20)(\d)0'?s\b")
_YEAR_RE = re.compile(r"(?<![\d,.$€£¥-])\b(1[1-9]\d\d|20\d\d)\b(?![\d,]|\.\d|\s*%)")
_DECIMAL_RE = re.compile(r"(?<![\d.])(-?)(" + _NUM + r")\.(\d+)\b")
_INTEGER_RE = re.compile(r"(?<![\d.])(-?)\b(" + _NUM + r")\b(?!\.\d)")
_REPEAT_RE = re.compile(r"([!?.,;:])\1+")
_MIXED_RE = re.compile(r"[!?]{2,}")
_SPACE_RE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([!?.,;:])")


def _words(number: str | int) -> str:
    """Cardinal words without num2words' commas ("one thousand two hundred"), which read as pauses."""
    return num2words(int(str(number).replace(",", ""))).replace(",", "")


def _money(m: re.Match[str]) -> str:
    one, many, cent, cents = _CURRENCIES[m.group(1)]
    whole, frac, scale = m.group(2), m.group(3), m.group(4)
    if scale:  # "$1.5 million" → "one point five million dollars"
        amount = _words(whole) + (" point " + " ".join(num2words(int(d)) for d in frac) if frac else "")
        return f"{amount} {scale} {many}"
    units = int(whole.replace(",", ""))
    hundredths = int((frac or "0")[:2].ljust(2, "0"))
    parts = []
    if units or not hundredths:
        parts.append(f"{_words(units)} {one if units == 1 else many}")
    if hundredths:
        parts.append(f"{_words(hundredths)} {cent if hundredths == 1 else cents}")
    return " and ".join(parts)


def _ordinal(m: re.Match[str]) -> str:
    return num2words(int(m.group(1).replace(",", "")), to="ordinal").replace(",", "")


def _decade(m: re.Match[str]) -> str:
    year = num2words(int(m.group(1) + m.group(2) + "0"), to="year")
    # "nineteen ninety" → "nineteen nineties", "two thousand" → "two thousands"
    return year[:-1] + "ies" if year.endswith("y") else year + "s"


def _year(m: re.Match[str]) -> str:
    return num2words(int(m.group(1)), to="year")


def _decimal(m: re.Match[str]) -> str:
    sign = "minus " if m.group(1) else ""
    digits = " ".join(num2words(int(d)) for d in m.group(3))
    return f"{sign}{_words(m.group(2))} point {digits}"


def _integer(m: re.Match[str]) -> str:
    return ("minus " if m.group(1) else "") + _words(m.group(2))


def _punctuation(text: str) -> str:
    text = _REPEAT_RE.sub(r"\1", text)  # "!!!" → "!", "..." → "."
    return _MIXED_RE.sub(lambda m: "?" if "?" in m.group(0) else "!", text)  # "?!?" → "?"


_RULES: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (_TITLE_RE, lambda m: _TITLES[m.group(1)] + " "),
    (_ANYWHERE_RE, lambda m: _ANYWHERE[m.group(0)]),
    (_NO_RE, "number "),
    (_MONEY_RE, _money),
    (_ORDINAL_RE, _ordinal),
    (_DECADE_RE, _decade),
    (_YEAR_RE, _year),
    (_DECIMAL_RE, _decimal),
    (_INTEGER_RE, _integer),
]


def normalize_text(text: str) -> str:
    """Rewrite `text` into speakable words; the order of rules matters (money before numbers)."""
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    for symbol, words in _SYMBOLS.items():
        text = text.replace(symbol, words)
    text = _punctuation(text)
    text = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)
    return _SPACE_RE.sub(" ", text).strip()
