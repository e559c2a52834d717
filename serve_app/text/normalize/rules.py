"""The ordered rule table, and `normalize_text`'s pipeline around it.

The order is the point: each rule reads what the rules before it left, so Markdown goes first,
URLs and phone numbers before the digits in them, dates before fractions, money and units before
bare numbers, and integers last. The domain modules only define rules; this table alone decides
when each one runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from serve_app.text.markdown import speakable_markdown
from serve_app.text.normalize import (
    clock,
    contacts,
    dates,
    fractions,
    measures,
    money,
    numbers,
    symbols,
    words,
)

__all__ = ["normalize_text"]

_RULES: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    symbols.UNICODE_MINUS,
    contacts.URL,
    contacts.EMAIL,
    contacts.HASHTAG,
    contacts.HANDLE,
    words.MENU_PATH,
    words.STREET,
    words.OTHER_STREET,
    words.APARTMENT,
    words.ZIP_CODE,  # before ranges and phone numbers: "94043-1351"
    words.CIRCA,
    dates.ISO_DATE_TIME,  # before anything reads its parts: the date, its "12:30" or the zone's "-05:00"
    dates.QUARTER,
    dates.FISCAL_YEAR,
    words.BUSINESS,
    words.TITLE,
    words.MOUNT,
    words.ANYWHERE,
    words.NO,
    words.HASH_NUMBER,
    words.ORDER_NUMBER,
    measures.PER,
    words.SIZES,
    words.SLASH_WORDS,
    fractions.RATING,
    contacts.EMERGENCY,
    symbols.ABOUT,
    numbers.SCIENTIFIC,
    numbers.POWER,
    dates.BEFORE_NUMBER,
    dates.MONTH_ABBR,
    dates.WEEKDAY_RANGE,
    dates.WEEKDAY_DATE,
    dates.DAY_MONTH,  # before dates
    dates.DOTTED_DATE,
    contacts.EXTENSION,
    contacts.PHONE,  # before versions: "555.123.4567" is a phone number
    contacts.INTERNATIONAL_PHONE,
    numbers.VERSION,
    dates.ISO_DATE,
    dates.SLASH_DATE,
    dates.SHORT_DATE,  # before fractions
    measures.BLOOD_PRESSURE,
    measures.FRACTION_UNIT,
    fractions.MIXED_FRACTION,
    fractions.VULGAR,
    fractions.FRACTION,
    measures.RANGE,  # before the rules that read a number with what follows it ("10-20 min")
    clock.MERIDIEM_RANGE,
    measures.FEET_INCHES,  # after ranges ("2-3\" thick"), before "x" as "times"
    measures.INCHES_ABBR,
    clock.CLOCK_SECONDS,  # before durations
    clock.DURATION,  # before clock times
    clock.TIME,
    clock.CLOCK_HOUR,
    numbers.RATIO,
    money.CODE_FIRST,
    dates.MONTH_DAY,
    money.CODE,
    money.NEGATIVE_MONEY,
    money.MONEY,
    measures.UNIT,  # before superscripts: "m²" is "square meters"
    numbers.SUPERSCRIPT,
    numbers.TIMES,
    numbers.ORDINAL,
    numbers.DECADE,
    numbers.SHORT_DECADE,
    numbers.YEAR,
    numbers.LEADING_DOT_DECIMAL,
    numbers.DECIMAL,
    numbers.INTEGER,
]


def normalize_text(text: str) -> str:
    """Rewrite `text` into speakable words; the order of rules matters (Markdown first, money
    before numbers)."""
    text = speakable_markdown(text)
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    for symbol, spoken in symbols.SYMBOLS.items():
        text = text.replace(symbol, spoken)
    return symbols.spacing(symbols.punctuation(text))
