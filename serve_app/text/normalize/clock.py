"""Clock times ("3:45 p.m.", "10:00"), clock hours ("9am"), their ranges ("9am-5pm") and durations
("finished in 3:05:42"): the colon and "am"/"pm" forms a speech model would read as digits and letters.
"""

from __future__ import annotations

import re

from serve_app.text.normalize.numbers import cardinal

__all__ = ["CLOCK_HOUR", "DURATION", "MERIDIEM_RANGE", "TIME"]

_DURATION_RE = re.compile(  # "finished in 3:05:42", "a time of 2:00:35"
    r"\b((?i:in|took|takes|take|taking|lasted|lasts|lasting|clocked(?:\s+in\s+at)?"
    r"|(?:time|record|duration|runtime|length)(?:\s+(?:of|was|is))?:?)"
    r"(?:\s+(?:just|about|under|over|around|only|roughly))?\s+)"
    r"(\d{1,2}):([0-5]\d):([0-5]\d)(?![\d:]|\.\d|\s+format\b)"
)
_CLOCK_HOUR_RE = re.compile(r"(?<![\w:.])(1[0-2]|0?[1-9])\s?([AaPp]\.?[Mm]\b\.?)")
_MERIDIEM_RANGE_RE = re.compile(r"((?:(?<=\d)|(?<=\d\s))[AaPp]\.?[Mm]\b\.?)\s?(?:-|\u2013)\s?(?=\d)")  # "9am-5pm"
_TIME_RE = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])(\s*(?:[AaPp]\.?[Mm]\b\.?))?")


def _time(m: re.Match[str]) -> str:
    """"3:45 p.m." → "three forty-five p.m.", "10:00" → "ten o'clock", "9:05" → "nine oh five"."""
    hours, minutes, suffix = int(m.group(1)), int(m.group(2)), (m.group(3) or "").strip()
    if minutes == 0:
        spoken = cardinal(hours) + ("" if suffix else " o'clock")
    else:
        spoken = f"{cardinal(hours)} {'oh ' if minutes < 10 else ''}{cardinal(minutes)}"
    return f"{spoken} {_meridiem(suffix)}" if suffix else spoken


def _duration(m: re.Match[str]) -> str:
    """"in 3:05:42" → "in three hours, five minutes and forty-two seconds" (zero parts not read)."""
    parts = [
        f"{cardinal(value)} {name if value == 1 else name + 's'}"
        for value, name in zip((int(m.group(2)), int(m.group(3)), int(m.group(4))), ("hour", "minute", "second"))
        if value
    ] or ["zero seconds"]
    spoken = parts[-1] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return m.group(1) + spoken


def _meridiem(suffix: str) -> str:
    """"pm" reads as a word; written "p.m." (as given otherwise: "PM", "p.m.")."""
    return f"{suffix[0]}.m." if suffix.rstrip(".") in ("am", "pm") else suffix


def _clock_hour(m: re.Match[str]) -> str:
    """"9am" → "nine a.m.", "11 PM" → "eleven PM"."""
    return f"{cardinal(m.group(1))} {_meridiem(m.group(2))}"


MERIDIEM_RANGE = (_MERIDIEM_RANGE_RE, r"\1 to ")
DURATION = (_DURATION_RE, _duration)
TIME = (_TIME_RE, _time)
CLOCK_HOUR = (_CLOCK_HOUR_RE, _clock_hour)
