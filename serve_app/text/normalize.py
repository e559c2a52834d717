"""Spell out what a speech model reads badly: Markdown (`serve_app.text.markdown`), numbers, money,
times, dates, phone numbers, ordinals, years, units and abbreviations.

CSM reads raw text; "$3.50" or "5th" tokenize into pieces the model never learned to voice, so the
API rewrites them into words before generation (`normalize: false` opts out). The rules are
deliberately conservative English rules: anything they do not recognise is left untouched.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from num2words import num2words

from serve_app.text.markdown import speakable_markdown

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
# Street types after a capitalised name or an ordinal ("Main St.", "5th Ave.") where no name follows:
# "St. John" is "Saint John".
_STREETS = {"St": "Street", "Ave": "Avenue", "Rd": "Road", "Blvd": "Boulevard", "Ln": "Lane"}
# Units after a number: abbreviation → (singular, plural). Case matters ("5 g" grams, "5G" a network).
_UNITS = {
    "km": ("kilometer", "kilometers"), "cm": ("centimeter", "centimeters"), "mm": ("millimeter", "millimeters"),
    "mi": ("mile", "miles"), "ft": ("foot", "feet"), "kg": ("kilogram", "kilograms"), "g": ("gram", "grams"),
    "mg": ("milligram", "milligrams"), "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"), "ml": ("milliliter", "milliliters"), "mL": ("milliliter", "milliliters"),
    "mph": ("mile per hour", "miles per hour"), "km/h": ("kilometer per hour", "kilometers per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"), "KB": ("kilobyte", "kilobytes"),
    "kB": ("kilobyte", "kilobytes"), "MB": ("megabyte", "megabytes"), "GB": ("gigabyte", "gigabytes"),
    "TB": ("terabyte", "terabytes"), "Hz": ("hertz", "hertz"), "kHz": ("kilohertz", "kilohertz"),
    "MHz": ("megahertz", "megahertz"), "GHz": ("gigahertz", "gigahertz"), "kW": ("kilowatt", "kilowatts"),
    "kWh": ("kilowatt hour", "kilowatt hours"), "ms": ("millisecond", "milliseconds"),
    "sec": ("second", "seconds"), "secs": ("second", "seconds"), "min": ("minute", "minutes"),
    "mins": ("minute", "minutes"), "hr": ("hour", "hours"), "hrs": ("hour", "hours"),
    "yr": ("year", "years"), "yrs": ("year", "years"),
}
_FRACTIONS = {2: ("half", "halves"), 4: ("quarter", "quarters")}  # others: "third", "thirds", ...
# Abbreviations expanded before a number ("Jan. 5", "vol. 2", "pp. 10") or, for "Mt.", a name.
_BEFORE_NUMBER = {"Jan": "January", "Feb": "February", "Mar": "March", "Apr": "April", "Jun": "June",
                  "Jul": "July", "Aug": "August", "Sep": "September", "Sept": "September", "Oct": "October",
                  "Nov": "November", "Dec": "December", "vol": "volume", "Vol": "volume", "pp": "pages",
                  "p": "page", "ch": "chapter", "Ch": "chapter", "fig": "figure", "Fig": "figure"}
_WEEKDAYS = {"Mon": "Monday", "Tue": "Tuesday", "Tues": "Tuesday", "Wed": "Wednesday", "Thu": "Thursday",
             "Thur": "Thursday", "Thurs": "Thursday", "Fri": "Friday", "Sat": "Saturday", "Sun": "Sunday"}
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_SYMBOLS = {"&": " and ", "%": " percent", "+/-": " plus or minus ", "\u00b1": " plus or minus ", "+": " plus ",
            "\u00d7": " times ", "\u2192": " to ", "=": " equals ", "@": " at ",
            "°C": " degrees Celsius", "°F": " degrees Fahrenheit", "°": " degrees"}

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

_NUM = r"\d{1,3}(?:,\d{3})+|\d+"  # 1,234,567 or 1234567
_TITLE_RE = re.compile(r"\b(" + "|".join(_TITLES) + r")\.\s+(?=[A-Z])")
_ANYWHERE_RE = re.compile("|".join(r"(?<!\w)" + re.escape(k) for k in _ANYWHERE))
_STREET_RE = re.compile(
    r"\b([A-Z][a-z]+|\d+(?:st|nd|rd|th))\s+(" + "|".join(_STREETS) + r")\.(?=\s*$|\s*[,;:!?)]|\s+[a-z\d])"
)
_VERSION_RE = re.compile(r"(?<![\w.])(?:(v)(\d+(?:\.\d+)*)|(\d+(?:\.\d+){2,}))(?![\w]|\.\d)")
_HASH_NUMBER_RE = re.compile(r"#(?=\d)")
_PER = {"mo": "month", "month": "month", "wk": "week", "week": "week", "day": "day", "hr": "hour",
        "hour": "hour", "yr": "year", "year": "year", "night": "night", "person": "person", "user": "user",
        "seat": "seat", "s": "second", "sec": "second", "min": "minute", "kg": "kilogram", "lb": "pound"}
_PER_RE = re.compile(  # "$5/mo", "500 mg/day", "$30/person/night": after a number (and its unit)
    r"(\d%?\s?(?:[A-Za-z]{1,5})?)((?:/(?:" + "|".join(sorted(_PER, key=len, reverse=True)) + r")\b)+)"
)
_RATING_RE = re.compile(  # "4.5/5", "4/5 stars" (a plain "4/5" is a fraction)
    r"(?<![\w./])(\d{1,2}\.\d|\d{1,2}(?=/(?:5|10) stars?\b))/(5|10)(?![\w/]|\.\d)"
)
_EMERGENCY_RE = re.compile(r"\b((?:call|dial|text|Call|Dial|Text)\s+)(911|999|112)\b")  # "call 911"
_ABOUT_RE = re.compile(r"~\s?(?=[$€£¥]?\d)")  # "~30 sec" → "about 30 sec"
_SCIENTIFIC_RE = re.compile(r"(?<![\w.#])(\d+(?:\.\d+)?)[eE]([+-]?)(\d+)\b")  # "1.6e-19"
_POWER_RE = re.compile(r"(?<=[\w)])\^(\d+)\b")  # "x^2", "10^8"
_URL_RE = re.compile(r"\bhttps?://(?:www\.)?([^\s/?#]+)((?:/[^\s?#]*)?)(?:[?#]\S*)?")
_EMAIL_RE = re.compile(r"(?<![\w.+-])([\w.+-]+)@((?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,})\b")
_UNIT_RE = re.compile(
    r"(?<![\w.])(-?)(" + _NUM + r")(?:\.(\d+))?\s?("
    + "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True)) + r")(?![\w/])"
)
_TIMES_RE = re.compile(r"(?<![\w.])(\d+)x(?:(\d+)\b|(?![\w]))")
_CLOCK_HOUR_RE = re.compile(r"(?<![\w:.])(1[0-2]|0?[1-9])\s?([AaPp]\.?[Mm]\b\.?)")
_FRACTION_RE = re.compile(r"(?<![\w/.])(\d{1,2})/(\d{1,2})(?![\w/]|\.\d)")
_RANGE_RE = re.compile(  # "10-20", "5.7-6.4", "5%-10%", "$10-$20"
    r"(?<![\w.,-])((?:" + _NUM + r")(?:\.\d+)?%?)(?:-|\s?\u2013\s?)([$€£¥]?(?:" + _NUM + r")(?:\.\d+)?)(?![\d_-]|[.,]\d)"
)
_MERIDIEM_RANGE_RE = re.compile(r"((?:(?<=\d)|(?<=\d\s))[AaPp]\.?[Mm]\b\.?)\s?(?:-|\u2013)\s?(?=\d)")  # "9am-5pm"
_MIXED_FRACTION_RE = re.compile(r"(?<![\w/.])(" + _NUM + r") (\d{1,2})/(\d{1,2})(?![\w/]|\.\d)")  # "1 1/2"
_VULGAR = {"½": (1, 2), "⅓": (1, 3), "⅔": (2, 3), "¼": (1, 4), "¾": (3, 4), "⅕": (1, 5), "⅖": (2, 5), "⅗": (3, 5),
           "⅘": (4, 5), "⅙": (1, 6), "⅚": (5, 6), "⅛": (1, 8), "⅜": (3, 8), "⅝": (5, 8), "⅞": (7, 8)}
_VULGAR_RE = re.compile(r"(?<![\w.])(?:(" + _NUM + r") ?)?([" + "".join(_VULGAR) + r"])")  # "1½", "¾"
_DOTTED_DATE_RE = re.compile(r"(?<![\d.])(0?[1-9]|[12]\d|3[01])\.(0?[1-9]|1[0-2])\.(1[1-9]\d\d|20\d\d)(?![\d]|\.\d)")
_NO_RE = re.compile(r"\b(No|no)\.\s*(?=\d)")
_MONEY_RE = re.compile(
    r"([$€£¥])\s?(" + _NUM + r")(?:\.(\d+))?(?:\s+(" + "|".join(_SCALES) + r")\b|(?i:(mm|mn|bn|tn|[kmbt]))\b)?"
)
_UNICODE_MINUS_RE = re.compile(r"\u2212(?=[$€£¥]?\d)")  # "−5" as "-5"
_NEGATIVE_MONEY_RE = re.compile(r"(?<![\w.])-(?=[$€£¥]\s?\d)")  # "-$5" → "minus $5"
_CODE_FIRST_RE = re.compile(r"\b(" + "|".join(_CODES) + r")\s?(?=\d)")  # "USD 30" as "$30"
_CODE_RE = re.compile(r"(?<![\d.])(" + _NUM + r")(?:\.(\d+))?\s?(" + "|".join(_CODES) + r")\b")
_TIME_RE = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])(\s*(?:[AaPp]\.?[Mm]\b\.?))?")
_ISO_DATE_RE = re.compile(r"(?<![\d-])(1[1-9]\d\d|20\d\d)-(0?[1-9]|1[0-2])-(0?[1-9]|[12]\d|3[01])(?![\d-])")
_SLASH_DATE_RE = re.compile(r"(?<![\d/])(\d{1,2})/(\d{1,2})/(\d{4})(?![\d/])")
_PHONE_RE = re.compile(
    r"(?<![\w+])(\+?1[\s.-]?)?\(?(\d{3})(?:\)[\s.-]?|[\s.-])(\d{3})[\s.-](\d{4})(?![\w]|[-.]\d)"  # (555) 123-4567
    r"|(?<![\w+().-])()()(\d{3})-(\d{4})(?![\w]|[-.]\d)"  # 555-1234
)
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
_WEEKDAY = r"(" + "|".join(sorted(_WEEKDAYS, key=len, reverse=True)) + r")"
_WEEKDAY_RANGE_RE = re.compile(r"\b" + _WEEKDAY + r"\.?\s?[-\u2013]\s?" + _WEEKDAY + r"\b")  # "Mon-Fri"
_WEEKDAY_DATE_RE = re.compile(  # "Mon, Jan 8", "Sat 10am" (not "the Sun 5 times")
    r"\b(?!Sun\b)" + _WEEKDAY + r"\b\.?(?=,?\s+(?:\d|(?:" + "|".join(_MONTHS) + r"|" + "|".join(_BEFORE_NUMBER) + r")\b))"
)
_RATIO_RE = re.compile(r"(?<![\d:])(\d+):(\d+)(?![\d:])")
_MOUNT_RE = re.compile(r"\bMt\.\s+(?=[A-Z])")
_ORDINAL_RE = re.compile(r"\b(" + _NUM + r")(st|nd|rd|th)\b", re.IGNORECASE)
_DECADE_RE = re.compile(r"\b(1[1-9]|20)(\d)0'?s\b")
_SHORT_DECADE_RE = re.compile(  # "the '90s", "the 90s", "in her 30s", "highs in the mid-60s"
    r"(?:(?<![\w'])'|(?<=\bthe )|(?<=\bher )|(?<=\bhis )|(?<=\btheir )|(?<=\bmid-)|(?<=\bearly )|(?<=\blate )"
    r"|(?<=\blow )|(?<=\bhigh )|(?<=\bupper ))([2-9]0)s\b"
)
_YEAR_RE = re.compile(r"(?<![\d,.$€£¥-])\b(1[1-9]\d\d|20\d\d)\b(?!\d|[.,]\d|\s*%)")
_DECIMAL_RE = re.compile(r"(?<![\w.])(-?)(" + _NUM + r")\.(\d+)\b")
_INTEGER_RE = re.compile(r"(?<![\w.])(-?)(" + _NUM + r")\b(?!\.\d)")
_REPEAT_RE = re.compile(r"([!?.,;:])\1+")
_MIXED_RE = re.compile(r"[!?]{2,}")
_SPACE_RE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"(?<!\s)\s+([!?.,;:])")


# num2words names numbers below 10**306; a longer run of digits is read digit by digit.
_MAX_NAMED_DIGITS = 300


def _words(number: str | int) -> str:
    """Cardinal words without num2words' commas ("one thousand two hundred"), which read as pauses."""
    digits = str(number).replace(",", "")
    if len(digits) > _MAX_NAMED_DIGITS:
        return _digit_words(digits)
    return num2words(int(digits)).replace(",", "")


def _money(m: re.Match[str]) -> str:
    one, many, cent, cents = _CURRENCIES[m.group(1)]
    whole, frac, scale = m.group(2), m.group(3), m.group(4) or _SCALE_SUFFIXES.get((m.group(5) or "").lower())
    if scale:  # "$1.5 million", "$1.5M" → "one point five million dollars"
        amount = _words(whole) + (" point " + _digit_words(frac) if frac else "")
        return f"{amount} {scale} {many}"
    units = whole.replace(",", "").lstrip("0") or "0"
    hundredths = int((frac or "0")[:2].ljust(2, "0"))
    parts = []
    if units != "0" or not hundredths:
        parts.append(f"{_words(units)} {one if units == '1' else many}")
    if hundredths:
        parts.append(f"{_words(hundredths)} {cent if hundredths == 1 else cents}")
    return " and ".join(parts)


def _money_code(m: re.Match[str]) -> str:
    """"3.50 USD" read as "$3.50"."""
    amount = _CODES[m.group(3)] + m.group(1) + (f".{m.group(2)}" if m.group(2) else "")
    match = _MONEY_RE.fullmatch(amount)
    return _money(match) if match else m.group(0)


def _time(m: re.Match[str]) -> str:
    """"3:45 p.m." → "three forty-five p.m.", "10:00" → "ten o'clock", "9:05" → "nine oh five"."""
    hours, minutes, suffix = int(m.group(1)), int(m.group(2)), (m.group(3) or "").strip()
    if minutes == 0:
        spoken = _words(hours) + ("" if suffix else " o'clock")
    else:
        spoken = f"{_words(hours)} {'oh ' if minutes < 10 else ''}{_words(minutes)}"
    return f"{spoken} {_meridiem(suffix)}" if suffix else spoken


def _date(year: int, month: int, day: int) -> str:
    return f"{_MONTHS[month - 1]} {num2words(day, to='ordinal')}, {num2words(year, to='year')}"


def _iso_date(m: re.Match[str]) -> str:
    return _date(int(m.group(1)), int(m.group(2)), int(m.group(3)))


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


def _phone(m: re.Match[str]) -> str:
    """Digit by digit, a pause between the groups: "five five five, one two three, four five six seven"."""
    prefix, area, exchange, line = m.group(1), m.group(2), m.group(3) or m.group(7), m.group(4) or m.group(8)
    groups = ([prefix.strip(" .-")] if prefix else []) + ([area] if area else []) + [exchange, line]
    return ", ".join(_digit_words(group) for group in groups)


def _version(m: re.Match[str]) -> str:
    """"v2.13.0" → "version two point thirteen point zero"; four parts of at most 255 are an IP
    address, read digit by digit ("one nine two dot one six eight dot zero dot one")."""
    parts = (m.group(2) or m.group(3)).split(".")
    if not m.group(1) and len(parts) == 4 and all(len(p) <= 3 and int(p) <= 255 for p in parts):
        return " dot ".join(_digit_words(p) for p in parts)
    return ("version " if m.group(1) else "") + " point ".join(_words(p) for p in parts)


def _url(m: re.Match[str]) -> str:
    """"https://www.example.com/docs/api" → "example dot com slash docs slash api" (the scheme,
    "www", the query and the fragment are not read; a sentence's closing mark stays)."""
    url, trailing = m.group(0), ""
    while url and url[-1] in ".,;:!?)]'\"":
        url, trailing = url[:-1], url[-1] + trailing
    parsed = _URL_RE.match(url)
    if parsed is None:
        return m.group(0)
    host, path = parsed.group(1), parsed.group(2).strip("/")
    spoken = host.replace(".", " dot ")
    if path:
        spoken += " slash " + " slash ".join(part for part in path.split("/") if part)
    return spoken + trailing


def _email(m: re.Match[str]) -> str:
    """"ana.b@example.co.uk" → "ana dot b at example dot co dot uk"."""
    return f"{m.group(1).replace('.', ' dot ')} at {m.group(2).replace('.', ' dot ')}"


def _unit(m: re.Match[str]) -> str:
    """"5 km" → "five kilometers", "1 kg" → "one kilogram", "2.5GB" → "two point five gigabytes"."""
    sign, whole, frac, unit = m.group(1), m.group(2), m.group(3), m.group(4)
    one, many = _UNITS[unit]
    amount = ("minus " if sign else "") + _words(whole) + (" point " + _digit_words(frac) if frac else "")
    return f"{amount} {one if whole == '1' and not frac else many}"


def _times(m: re.Match[str]) -> str:
    """"3x faster" → "three times faster"; "1920x1080" → "... by ..."."""
    if m.group(2):
        return f"{_words(m.group(1))} by {_words(m.group(2))}"
    return f"{_words(m.group(1))} times"


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
    return f"{_words(numerator)} {one if numerator == 1 else many}"


def _mixed_fraction(m: re.Match[str]) -> str:
    """"1 1/2" → "one and one half" (not a proper fraction after the number: as it was)."""
    numerator, denominator = int(m.group(2)), int(m.group(3))
    if not 0 < numerator < denominator <= 16:
        return m.group(0)
    return f"{_words(m.group(1))} and {_fraction_words(numerator, denominator)}"


def _vulgar(m: re.Match[str]) -> str:
    """"½" → "one half", "1¼" → "one and one quarter"."""
    fraction = _fraction_words(*_VULGAR[m.group(2)])
    return f"{_words(m.group(1))} and {fraction}" if m.group(1) else fraction


def _meridiem(suffix: str) -> str:
    """"pm" reads as a word; written "p.m." (as given otherwise: "PM", "p.m.")."""
    return f"{suffix[0]}.m." if suffix.rstrip(".") in ("am", "pm") else suffix


def _clock_hour(m: re.Match[str]) -> str:
    """"9am" → "nine a.m.", "11 PM" → "eleven PM"."""
    return f"{_words(m.group(1))} {_meridiem(m.group(2))}"


def _street(m: re.Match[str]) -> str:
    """"Main St." → "Main Street", its full stop kept where it also ends the text."""
    stop = "." if not m.string[m.end():].strip() else ""
    return f"{m.group(1)} {_STREETS[m.group(2)]}{stop}"


def _range(m: re.Match[str]) -> str:
    """"10-20" → "10 to 20", "$10-$20" → "$10 to $20" (each number read by the rules after this one:
    years as years)."""
    return f"{m.group(1)} to {m.group(2)}"


def _dotted_date(m: re.Match[str]) -> str:
    """Day first, as dotted dates are written ("31.12.2025")."""
    return _date(int(m.group(3)), int(m.group(2)), int(m.group(1)))


_DIGITS = {str(d): num2words(d) for d in range(10)} | {"+": "plus"}


def _digit_words(digits: str) -> str:
    """Each character on its own: "305" → "three zero five"."""
    return " ".join(_DIGITS.get(d, d) for d in digits)


def _ordinal(m: re.Match[str]) -> str:
    digits = m.group(1).replace(",", "")
    if len(digits) > _MAX_NAMED_DIGITS:
        return _digit_words(digits)
    return num2words(int(digits), to="ordinal").replace(",", "")


def _decade(m: re.Match[str]) -> str:
    year = num2words(int(m.group(1) + m.group(2) + "0"), to="year")
    # "nineteen ninety" → "nineteen nineties", "two thousand" → "two thousands"
    return year[:-1] + "ies" if year.endswith("y") else year + "s"


def _year(m: re.Match[str]) -> str:
    return num2words(int(m.group(1)), to="year")


def _decimal(m: re.Match[str]) -> str:
    sign = "minus " if m.group(1) else ""
    digits = _digit_words(m.group(3))
    return f"{sign}{_words(m.group(2))} point {digits}"


def _integer(m: re.Match[str]) -> str:
    return ("minus " if m.group(1) else "") + _words(m.group(2))


def _anywhere(m: re.Match[str]) -> str:
    """"etc." → "et cetera", keeping the full stop where it also ends the sentence."""
    words = _ANYWHERE[m.group(0)]
    end = m.string[m.end():]
    sentence_end = m.group(0) in ("etc.", "Jr.", "Sr.") and (not end.strip() or re.match(r"\s+[A-Z]", end))
    return words + ("." if sentence_end else "")


def _punctuation(text: str) -> str:
    text = _REPEAT_RE.sub(r"\1", text)  # "!!!" → "!", "..." → "."
    return _MIXED_RE.sub(lambda m: "?" if "?" in m.group(0) else "!", text)  # "?!?" → "?"


_RULES: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (_UNICODE_MINUS_RE, "-"),
    (_URL_RE, _url),
    (_EMAIL_RE, _email),
    (_STREET_RE, _street),
    (_TITLE_RE, lambda m: _TITLES[m.group(1)] + " "),
    (_MOUNT_RE, "Mount "),
    (_ANYWHERE_RE, _anywhere),
    (_NO_RE, "number "),
    (_HASH_NUMBER_RE, "number "),
    (_PER_RE, lambda m: m.group(1) + "".join(" per " + _PER[unit] for unit in m.group(2).split("/")[1:])),
    (_RATING_RE, r"\1 out of \2"),
    (_EMERGENCY_RE, lambda m: m.group(1) + _digit_words(m.group(2))),
    (_ABOUT_RE, "about "),
    (_SCIENTIFIC_RE, lambda m: f"{m.group(1)} times ten to the power of {'minus ' if m.group(2) == '-' else ''}{m.group(3)}"),
    (_POWER_RE, lambda m: {"2": " squared", "3": " cubed"}.get(m.group(1), f" to the power of {m.group(1)}")),
    (_BEFORE_NUMBER_RE, lambda m: _BEFORE_NUMBER[m.group(1)] + " "),
    (_MONTH_ABBR_RE, lambda m: _BEFORE_NUMBER[m.group(1)] + " "),
    (_WEEKDAY_RANGE_RE, lambda m: f"{_WEEKDAYS[m.group(1)]} to {_WEEKDAYS[m.group(2)]}"),
    (_WEEKDAY_DATE_RE, lambda m: _WEEKDAYS[m.group(1)]),
    (_DAY_MONTH_RE, lambda m: f"the {num2words(int(m.group(1)), to='ordinal')} of {m.group(2)}"),  # before dates
    (_DOTTED_DATE_RE, _dotted_date),
    (_PHONE_RE, _phone),  # before versions: "555.123.4567" is a phone number
    (_VERSION_RE, _version),
    (_ISO_DATE_RE, _iso_date),
    (_SLASH_DATE_RE, _slash_date),
    (_MIXED_FRACTION_RE, _mixed_fraction),
    (_VULGAR_RE, _vulgar),
    (_FRACTION_RE, _fraction),
    (_RANGE_RE, _range),  # before the rules that read a number with what follows it ("10-20 min")
    (_MERIDIEM_RANGE_RE, r"\1 to "),
    (_TIME_RE, _time),
    (_CLOCK_HOUR_RE, _clock_hour),
    (_RATIO_RE, lambda m: f"{_words(m.group(1))} to {_words(m.group(2))}"),
    (_CODE_FIRST_RE, lambda m: _CODES[m.group(1)]),
    (_MONTH_DAY_RE, _month_day),
    (_CODE_RE, _money_code),
    (_NEGATIVE_MONEY_RE, "minus "),
    (_MONEY_RE, _money),
    (_UNIT_RE, _unit),
    (_TIMES_RE, _times),
    (_ORDINAL_RE, _ordinal),
    (_DECADE_RE, _decade),
    (_SHORT_DECADE_RE, lambda m: _words(m.group(1))[:-1] + "ies"),
    (_YEAR_RE, _year),
    (_DECIMAL_RE, _decimal),
    (_INTEGER_RE, _integer),
]


def normalize_text(text: str) -> str:
    """Rewrite `text` into speakable words; the order of rules matters (Markdown first, money
    before numbers)."""
    text = speakable_markdown(text)
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    for symbol, words in _SYMBOLS.items():
        text = text.replace(symbol, words)
    text = _punctuation(text)
    text = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)
    return _SPACE_RE.sub(" ", text).strip()
