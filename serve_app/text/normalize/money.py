"""Money: currency symbols and codes ("$3.50", "3.50 USD", "USD 30"), cents, scales ("$1.5M") and signs.

A currency symbol is read after its amount ("five dollars"), so these rules run before the number
rules would read the amount on its own.
"""

from __future__ import annotations

import re

from serve_app.text.normalize.numbers import NUM, cardinal, digit_words

__all__ = ["CODE", "CODE_FIRST", "MONEY", "NEGATIVE_MONEY"]

# symbol → (singular, plural, cent singular, cent plural)
_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "¥": ("yen", "yen", "sen", "sen"),
}
_SCALES = {"thousand", "million", "billion", "trillion"}
_SCALE_SUFFIXES = {"k": "thousand", "m": "million", "mm": "million", "mn": "million", "b": "billion",
                   "bn": "billion", "t": "trillion", "tn": "trillion"}
_CODES = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}  # "3.50 USD" reads as "$3.50"
_MONEY_RE = re.compile(
    r"([$€£¥])\s?(" + NUM + r")(?:\.(\d+))?(?:\s+(" + "|".join(_SCALES) + r")\b|(?i:(mm|mn|bn|tn|[kmbt]))\b)?"
)
_NEGATIVE_MONEY_RE = re.compile(r"(?<![\w.])-(?=[$€£¥]\s?\d)")  # "-$5" → "minus $5"
_CODE_FIRST_RE = re.compile(r"\b(" + "|".join(_CODES) + r")\s?(?=\d)")  # "USD 30" as "$30"
_CODE_RE = re.compile(r"(?<![\d.])(" + NUM + r")(?:\.(\d+))?\s?(" + "|".join(_CODES) + r")\b")


def _money(m: re.Match[str]) -> str:
    one, many, cent, cents = _CURRENCIES[m.group(1)]
    whole, frac, scale = m.group(2), m.group(3), m.group(4) or _SCALE_SUFFIXES.get((m.group(5) or "").lower())
    if scale:  # "$1.5 million", "$1.5M" → "one point five million dollars"
        amount = cardinal(whole) + (" point " + digit_words(frac) if frac else "")
        return f"{amount} {scale} {many}"
    units = whole.replace(",", "").lstrip("0") or "0"
    hundredths = int((frac or "0")[:2].ljust(2, "0"))
    parts = []
    if units != "0" or not hundredths:
        parts.append(f"{cardinal(units)} {one if units == '1' else many}")
    if hundredths:
        parts.append(f"{cardinal(hundredths)} {cent if hundredths == 1 else cents}")
    return " and ".join(parts)


def _money_code(m: re.Match[str]) -> str:
    """"3.50 USD" read as "$3.50"."""
    amount = _CODES[m.group(3)] + m.group(1) + (f".{m.group(2)}" if m.group(2) else "")
    match = _MONEY_RE.fullmatch(amount)
    return _money(match) if match else m.group(0)


CODE_FIRST = (_CODE_FIRST_RE, lambda m: _CODES[m.group(1)])
CODE = (_CODE_RE, _money_code)
NEGATIVE_MONEY = (_NEGATIVE_MONEY_RE, "minus ")
MONEY = (_MONEY_RE, _money)
