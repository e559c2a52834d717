"""Clock times ("3:45 p.m.", "10:00"), clock hours ("9am"), their ranges ("9am-5pm") and durations
("finished in 3:05:42", "1:02:03.5", "lap 3:45.2"): the colon and "am"/"pm" forms a speech model would
read as digits and letters. Two parts are a clock time, unless the seconds have a decimal fraction
("3:45.2", minutes and seconds); three are hours, minutes and seconds, except after "at" or before
"am"/"pm", where they are a time of day with its seconds ("at 14:32:07"). `time_of_day` and `time_zone`
also read the time of an ISO 8601 date-time (`dates`).
"""

from __future__ import annotations

import re

from serve_app.text.normalize.numbers import cardinal, digit_words

__all__ = ["CLOCK_HOUR", "CLOCK_SECONDS", "DURATION", "MERIDIEM_RANGE", "TIME", "time_of_day", "time_zone"]

# "finished in 3:05:42", "a lap of 0:01:05.3"; without hours, only with a fraction ("lap 3:45.2": "3:45" is a time)
_DURATION_RE = re.compile(
    r"(?<![\w:.])(?:(\d{1,2}):(?=[0-5]\d:)|(?=\d{1,2}:[0-5]\d\.\d))(\d{1,2}):([0-5]\d)(?:\.(\d+))?(?![\d:]|\.\d)"
)
_CLOCK_SECONDS_RE = re.compile(  # "at 14:32:07", "10:30:15 PM"
    r"(?:(?<=\b[Aa]t )|(?<![\w:.])(?=\d{1,2}:\d\d:\d\d\s*[AaPp]\.?[Mm]\b))"
    r"([01]?\d|2[0-3]):([0-5]\d):([0-5]\d)(?![\d:]|\.\d)(\s*[AaPp]\.?[Mm]\b\.?)?"
)
_CLOCK_HOUR_RE = re.compile(r"(?<![\w:.])(1[0-2]|0?[1-9])\s?([AaPp]\.?[Mm]\b\.?)")
_MERIDIEM_RANGE_RE = re.compile(r"((?:(?<=\d)|(?<=\d\s))[AaPp]\.?[Mm]\b\.?)\s?(?:-|\u2013)\s?(?=\d)")  # "9am-5pm"
_TIME_RE = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])(\s*(?:[AaPp]\.?[Mm]\b\.?))?")


def _time(m: re.Match[str]) -> str:
    """"3:45 p.m." → "three forty-five p.m.", "10:00" → "ten o'clock", "9:05" → "nine oh five"."""
    return time_of_day(int(m.group(1)), int(m.group(2)), suffix=(m.group(3) or "").strip())


def _clock(hours: int, minutes: int, *, o_clock: bool) -> str:
    if minutes == 0:
        return cardinal(hours) + (" o'clock" if o_clock else "")
    return f"{cardinal(hours)} {'oh ' if minutes < 10 else ''}{cardinal(minutes)}"


def _clock_seconds(m: re.Match[str]) -> str:
    """"at 14:32:07" → "at fourteen thirty-two and seven seconds"; "10:30:15 pm" → "ten thirty and
    fifteen seconds p.m." (a time of day, not a duration)."""
    return time_of_day(int(m.group(1)), int(m.group(2)), int(m.group(3)), (m.group(4) or "").strip())


def time_of_day(hours: int, minutes: int, seconds: int = 0, suffix: str = "") -> str:
    """A time of day with its seconds (none read when zero): (14, 32, 7) → "fourteen thirty-two and seven
    seconds", (10, 30, 15, "pm") → "ten thirty and fifteen seconds p.m.", (12, 0) → "twelve o'clock"."""
    spoken = _clock(hours, minutes, o_clock=not suffix)
    if seconds:
        spoken += f" and {cardinal(seconds)} {'second' if seconds == 1 else 'seconds'}"
    return f"{spoken} {_meridiem(suffix)}" if suffix else spoken


def time_zone(designator: str) -> str:
    """An ISO 8601 zone designator: "Z" → "UTC", "+02:00" → "UTC plus two", "-0500" → "UTC minus five",
    "+05:30" → "UTC plus five thirty" ("+00:00" is "UTC")."""
    if designator == "Z":
        return "UTC"
    hours, minutes = int(designator[1:3]), int(designator[-2:])
    if not hours and not minutes:
        return "UTC"
    return f"UTC {'plus' if designator[0] == '+' else 'minus'} {_clock(hours, minutes, o_clock=False)}"


def _duration(m: re.Match[str]) -> str:
    """"3:05:42" → "three hours, five minutes and forty-two seconds", "0:01:05.3" → "one minute and five
    point three seconds", "3:45.2" (no hours) → "three minutes and forty-five point two seconds" (zero
    parts not read)."""
    hours, minutes, seconds, fraction = int(m.group(1) or 0), int(m.group(2)), int(m.group(3)), m.group(4) or ""
    parts = [f"{cardinal(value)} {name if value == 1 else name + 's'}"
             for value, name in ((hours, "hour"), (minutes, "minute")) if value]
    if seconds or fraction.strip("0"):
        spoken_seconds = cardinal(seconds) + (f" point {digit_words(fraction)}" if fraction else "")
        parts.append(f"{spoken_seconds} {'second' if seconds == 1 and not fraction else 'seconds'}")
    parts = parts or ["zero seconds"]
    return parts[-1] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _meridiem(suffix: str) -> str:
    """"pm" reads as a word; written "p.m." (as given otherwise: "PM", "p.m.")."""
    return f"{suffix[0]}.m." if suffix.rstrip(".") in ("am", "pm") else suffix


def _clock_hour(m: re.Match[str]) -> str:
    """"9am" → "nine a.m.", "11 PM" → "eleven PM"."""
    return f"{cardinal(m.group(1))} {_meridiem(m.group(2))}"


MERIDIEM_RANGE = (_MERIDIEM_RANGE_RE, r"\1 to ")
CLOCK_SECONDS = (_CLOCK_SECONDS_RE, _clock_seconds)
DURATION = (_DURATION_RE, _duration)
TIME = (_TIME_RE, _time)
CLOCK_HOUR = (_CLOCK_HOUR_RE, _clock_hour)
