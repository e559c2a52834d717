"""Dates ("2026-12-05", "12/05/2026", "31.12.2025", "due 3/15", "December 5", "3 March"), ISO 8601
date-times ("2025-12-31T12:30:45Z": the date, then the time of day and its zone), month and weekday
abbreviations, quarters ("Q3") and fiscal years ("FY24").

Months are named and days read as ordinals, as dates are said; a month and day that may be a fraction
("through 3/4 of the book") stay one.
"""

from __future__ import annotations

import re

from num2words import num2words

from serve_app.text.normalize.clock import time_of_day, time_zone
from serve_app.text.normalize.measures import NEXT_WORD_RE, UNITS
from serve_app.text.normalize.numbers import cardinal

__all__ = [
    "BEFORE_NUMBER", "DAY_MONTH", "DOTTED_DATE", "FISCAL_YEAR", "ISO_DATE", "ISO_DATE_TIME", "MONTH_ABBR", "MONTH_DAY",
    "QUARTER", "SHORT_DATE", "SLASH_DATE", "WEEKDAYS", "WEEKDAY_DATE", "WEEKDAY_RANGE",
]

# Abbreviations expanded before a number ("Jan. 5", "vol. 2", "pp. 10").
_BEFORE_NUMBER = {"Jan": "January", "Feb": "February", "Mar": "March", "Apr": "April", "Jun": "June",
                  "Jul": "July", "Aug": "August", "Sep": "September", "Sept": "September", "Oct": "October",
                  "Nov": "November", "Dec": "December", "vol": "volume", "Vol": "volume", "pp": "pages",
                  "p": "page", "ch": "chapter", "Ch": "chapter", "fig": "figure", "Fig": "figure"}
WEEKDAYS = {"Mon": "Monday", "Tue": "Tuesday", "Tues": "Tuesday", "Wed": "Wednesday", "Thu": "Thursday",
            "Thur": "Thursday", "Thurs": "Thursday", "Fri": "Friday", "Sat": "Saturday", "Sun": "Sunday"}
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_OF_A_FRACTION = {"of", "the", "a", "an", "cup", "cups", "inch", "inches", "mile", "miles", "pound", "pounds"}
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_QUARTER_RE = re.compile(r"\bQ([1-4])\b")  # "Q3"
_FISCAL_YEAR_RE = re.compile(r"\bFY\s?'?(\d{4}|\d{2})\b")  # "FY24", "FY 2024"
_MONTH_DAY_NUMBER = r"(0?[1-9]|1[0-2])/(0?[1-9]|[12]\d|3[01])(?![\w/]|\.\d)"
_SHORT_DATE_RE = re.compile(  # "due 3/15", "from 12/22 to 1/2" (a plain "3/15" is a fraction)
    r"\b(?:((?i:on|until|till|through|thru|due|since|starting|effective|expires?|ends|renews?|begins|starts|"
    r"as of|end of day|EOD|COB)|" + "|".join(dict.fromkeys(WEEKDAYS.values())) + r")|((?i:by|from|before|after)))(,?\s+)"
    + _MONTH_DAY_NUMBER + r"(?:(\s*(?:-|\u2013|to|through|until|thru)\s*)(?<![\w/])" + _MONTH_DAY_NUMBER + ")?"
)
_DOTTED_DATE_RE = re.compile(r"(?<![\d.])(0?[1-9]|[12]\d|3[01])\.(0?[1-9]|1[0-2])\.(1[1-9]\d\d|20\d\d)(?![\d]|\.\d)")
_ISO_DAY = r"(?<![\d-])(1[1-9]\d\d|20\d\d)-(0?[1-9]|1[0-2])-(0?[1-9]|[12]\d|3[01])"
_ISO_DATE_RE = re.compile(_ISO_DAY + r"(?![\d-])")
_ISO_DATE_TIME_RE = re.compile(  # "2025-12-31T12:30:45.123Z", "2025-12-31 12:30", "2025-12-31T09:00-05:00"
    _ISO_DAY + r"[T ]([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d)(?:\.\d+)?)?"  # fractional seconds not read
    # A zone: "Z", or an offset, except right after a space-separated "12:30" ("2025-12-31 12:30-13:00" is a
    # range); or "am"/"pm" ("2025-12-31 9:00 PM").
    r"(?:(Z|(?<! \d:\d\d)(?<! \d\d:\d\d)[+-](?:0\d|1[0-4]):?[0-5]\d)|(\s*[AaPp]\.?[Mm]\b\.?))?(?![\w:+-]|\.\d)"
)
_SLASH_DATE_RE = re.compile(r"(?<![\d/])(\d{1,2})/(\d{1,2})/(\d{4})(?![\d/])")
_BEFORE_NUMBER_RE = re.compile(r"\b(" + "|".join(_BEFORE_NUMBER) + r")\.\s*(?=\d)")
_MONTH_ABBR_RE = re.compile(  # "Dec 5" (with a full stop, "Dec. 5", `_BEFORE_NUMBER_RE`)
    r"\b(" + "|".join(k for k in _BEFORE_NUMBER if k[0].isupper() and k not in ("Vol", "Ch", "Fig")) + r")\s+(?=\d)"
)
_DAY = r"([12]?\d|3[01])"
_MONTH_DAY_RE = re.compile(  # "December 5", "December 5 to 7" (a range already read)
    r"\b(" + "|".join(_MONTHS) + r")\s+" + _DAY + r"(?:\s+to\s+" + _DAY + r")?\b(?![:.,]?\d)"
)
_DAY_MONTH_RE = re.compile(  # "3 March 2026" (May only before a year: "3 may go")
    r"(?<![\d,.])\b" + _DAY + r"\s+(" + "|".join(m for m in _MONTHS if m != "May") + r"|May(?=,?\s+\d{4}\b))\b"
)
_WEEKDAY = r"(" + "|".join(sorted(WEEKDAYS, key=len, reverse=True)) + r")"
_WEEKDAY_RANGE_RE = re.compile(r"\b" + _WEEKDAY + r"\.?\s?[-\u2013]\s?" + _WEEKDAY + r"\b")  # "Mon-Fri"
_WEEKDAY_DATE_RE = re.compile(  # "Mon, Jan 8", "Sat 10am" (not "the Sun 5 times")
    r"\b(?!Sun\b)" + _WEEKDAY + r"\b\.?(?=,?\s+(?:\d|(?:" + "|".join(_MONTHS) + r"|" + "|".join(_BEFORE_NUMBER) + r")\b))"
)


def _date(year: int, month: int, day: int) -> str:
    return f"{_MONTHS[month - 1]} {num2words(day, to='ordinal')}, {num2words(year, to='year')}"


def _iso_date(m: re.Match[str]) -> str:
    return _date(int(m.group(1)), int(m.group(2)), int(m.group(3)))


def _iso_date_time(m: re.Match[str]) -> str:
    """"2025-12-31T12:30:45Z" → "December thirty-first, twenty twenty-five at twelve thirty and forty-five
    seconds UTC", "2025-12-31 9:00 PM" → "December thirty-first, twenty twenty-five at nine PM"."""
    spoken = f"{_date(int(m.group(1)), int(m.group(2)), int(m.group(3)))} at "
    spoken += time_of_day(int(m.group(4)), int(m.group(5)), int(m.group(6) or 0), (m.group(8) or "").strip())
    return f"{spoken} {time_zone(m.group(7))}" if m.group(7) else spoken


def _slash_date(m: re.Match[str]) -> str:
    """Month first, as in American English, unless the first number cannot be a month (31/12/2025)."""
    first, second, year = int(m.group(1)), int(m.group(2)), int(m.group(3))
    month, day = (second, first) if first > 12 else (first, second)
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return m.group(0)
    return _date(year, month, day)


def _month_day(m: re.Match[str]) -> str:
    """"December 5" → "December fifth", "December 5 to 7" → "December fifth to seventh"."""
    last = f" to {num2words(int(m.group(3)), to='ordinal')}" if m.group(3) else ""
    return f"{m.group(1)} {num2words(int(m.group(2)), to='ordinal')}{last}"


def _short_date(m: re.Match[str]) -> str:
    """"due 3/15" → "due March fifteenth", "from 12/22 to 1/2" → "from December twenty-second to January
    second". After "by", "from", "before" or "after" a common fraction stays one ("cut by 1/2")."""
    month, day = int(m.group(4)), int(m.group(5))
    if not _valid_day(month, day) or (month < day <= 8 and (m.group(2) or _fraction_follows(m))):
        return m.group(0)
    spoken = f"{m.group(1) or m.group(2)}{m.group(3)}{_MONTHS[month - 1]} {num2words(day, to='ordinal')}"
    if m.group(6):
        month2, day2 = int(m.group(7)), int(m.group(8))
        if not _valid_day(month2, day2):
            return spoken + m.group(0)[m.start(6) - m.start():]
        spoken += f"{m.group(6)}{_MONTHS[month2 - 1]} {num2words(day2, to='ordinal')}"
    return spoken


def _fraction_follows(m: re.Match[str]) -> bool:
    """Whether a word after a month and day makes them a fraction ("through 3/4 of the book")."""
    after = NEXT_WORD_RE.match(m.string, m.end(5))
    return bool(after) and (after.group(1).lower() in _OF_A_FRACTION or after.group(1) in UNITS)


def _valid_day(month: int, day: int) -> bool:
    return 1 <= month <= 12 and 1 <= day <= _DAYS_IN_MONTH[month - 1]


def _fiscal_year(m: re.Match[str]) -> str:
    """"FY2024" → "fiscal year twenty twenty-four", "FY24" → "fiscal year twenty-four", "FY05" → "fiscal
    year oh five"."""
    year = m.group(1)
    if len(year) == 4:
        return "fiscal year " + num2words(int(year), to="year")
    return "fiscal year " + (f"oh {cardinal(year[1])}" if year[0] == "0" and year != "00" else cardinal(year))


def _dotted_date(m: re.Match[str]) -> str:
    """Day first, as dotted dates are written ("31.12.2025")."""
    return _date(int(m.group(3)), int(m.group(2)), int(m.group(1)))


QUARTER = (_QUARTER_RE, lambda m: "Q " + cardinal(m.group(1)))
FISCAL_YEAR = (_FISCAL_YEAR_RE, _fiscal_year)
BEFORE_NUMBER = (_BEFORE_NUMBER_RE, lambda m: _BEFORE_NUMBER[m.group(1)] + " ")
MONTH_ABBR = (_MONTH_ABBR_RE, lambda m: _BEFORE_NUMBER[m.group(1)] + " ")
WEEKDAY_RANGE = (_WEEKDAY_RANGE_RE, lambda m: f"{WEEKDAYS[m.group(1)]} to {WEEKDAYS[m.group(2)]}")
WEEKDAY_DATE = (_WEEKDAY_DATE_RE, lambda m: WEEKDAYS[m.group(1)])
DAY_MONTH = (_DAY_MONTH_RE, lambda m: f"the {num2words(int(m.group(1)), to='ordinal')} of {m.group(2)}")
DOTTED_DATE = (_DOTTED_DATE_RE, _dotted_date)
ISO_DATE = (_ISO_DATE_RE, _iso_date)
ISO_DATE_TIME = (_ISO_DATE_TIME_RE, _iso_date_time)
SLASH_DATE = (_SLASH_DATE_RE, _slash_date)
SHORT_DATE = (_SHORT_DATE_RE, _short_date)
MONTH_DAY = (_MONTH_DAY_RE, _month_day)
