"""Quantities: units after a number ("5 km"), feet and inches (5'10"), rates ("$5/mo"), ranges
("10-20") and blood pressure.

`UNITS`, `COUNTED_PER` and `NEXT_WORD_RE` are shared with the rules that must not take a quantity
for something else: a month and day followed by "of" or a unit ("3/4 cup") is a fraction, and
"requests/day" a rate where "black/white" is a choice.
"""

from __future__ import annotations

import re

from serve_app.text.normalize.fractions import VULGAR_FRACTIONS
from serve_app.text.normalize.numbers import NUM, cardinal, digit_words

__all__ = [
    "BLOOD_PRESSURE", "COUNTED_PER", "FEET_INCHES", "FRACTION_UNIT", "INCHES_ABBR", "NEXT_WORD_RE", "PER",
    "PER_TIME", "RANGE", "UNIT", "UNITS",
]

# Units after a number: abbreviation → (singular, plural). Case matters ("5 g" grams, "5G" a network).
UNITS = {
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
    "tbsp": ("tablespoon", "tablespoons"), "Tbsp": ("tablespoon", "tablespoons"),
    "tsp": ("teaspoon", "teaspoons"), "L": ("liter", "liters"), "kcal": ("kilocalorie", "kilocalories"),
    "cal": ("calorie", "calories"), "bpm": ("beat per minute", "beats per minute"),
    "mmHg": ("millimeter of mercury", "millimeters of mercury"), "IU": ("international unit", "international units"),
    "fps": ("frame per second", "frames per second"), "bps": ("basis point", "basis points"),
    "kbps": ("kilobit per second", "kilobits per second"), "Mbps": ("megabit per second", "megabits per second"),
    "Gbps": ("gigabit per second", "gigabits per second"), "m": ("meter", "meters"),
    "m²": ("square meter", "square meters"), "cm²": ("square centimeter", "square centimeters"),
    "mm²": ("square millimeter", "square millimeters"), "km²": ("square kilometer", "square kilometers"),
    "ft²": ("square foot", "square feet"), "in²": ("square inch", "square inches"),
    "mi²": ("square mile", "square miles"), "m³": ("cubic meter", "cubic meters"),
    "cm³": ("cubic centimeter", "cubic centimeters"), "ft³": ("cubic foot", "cubic feet"),
}
# "m" is a meter only with a space ("3,776 m"): written on the number it is as often minutes or millions
# ("5m", "10m users"), so there it needs a race after it or a track distance after "the" ("the 100m").
_RACES = ("dash", "sprint", "race", "run", "hurdles", "freestyle", "butterfly", "backstroke", "breaststroke",
          "relay", "medley", "final", "finals", "record", "title")
_TRACK_DISTANCES = ("50", "60", "100", "110", "200", "400", "800", "1500", "3000", "5000", "10000")
# "cal" is a calorie, except for a gun's caliber (".50 cal rifle").
_CALIBER_WORDS = ("rifle", "rifles", "pistol", "pistols", "gun", "guns", "handgun", "revolver", "round", "rounds",
                  "ammo", "bullet", "bullets", "machine", "cartridge", "cartridges")
# Words after a length that make it a noun ("65 inches with 4K", "6 inches of snow"); any other word
# after it is what it measures, and the length an adjective ("a 65 inch TV").
_MEASURE_NOT_ADJECTIVE = {
    "a", "about", "above", "across", "after", "again", "already", "also", "an", "and", "apart", "are", "around",
    "as", "at", "away", "be", "been", "before", "below", "between", "bigger", "but", "by", "deep", "deeper", "down",
    "each", "every", "for", "from", "has", "have", "high", "higher", "if", "in", "into", "is", "it", "larger",
    "long", "longer", "lower", "max", "maximum", "min", "minimum", "more", "less", "of", "off", "on", "or",
    "over", "overnight", "per", "plus", "shorter", "since", "smaller", "so", "tall", "taller", "than", "that",
    "the", "then", "thick", "thicker", "thin", "thinner", "this", "to", "today", "tonight", "too", "total",
    "under", "up", "was", "were", "when", "wide", "wider", "will", "with", "would", "yet", "yesterday",
}
_LABELS = {"W": "wide", "H": "high", "D": "deep", "L": "long"}  # "36\" W x 70\" H"
# What an amount is counted per, after a slash ("$5/mo", "500 mg/day"): abbreviation → word.
COUNTED_PER = {
    "mo": "month", "month": "month", "wk": "week", "week": "week", "day": "day", "hr": "hour", "hour": "hour",
    "yr": "year", "year": "year", "night": "night", "person": "person", "user": "user", "seat": "seat",
    "s": "second", "sec": "second", "min": "minute", "kg": "kilogram", "lb": "pound",
}
_TIME_UNITS = ("second", "minute", "hour", "day", "week", "month", "year")
# Time units that a plural before a slash is counted per ("requests/day"; "day/night" is a choice).
PER_TIME = {unit for unit, word in COUNTED_PER.items() if word in _TIME_UNITS} | set(_TIME_UNITS)
_PER_RE = re.compile(  # "$5/mo", "500 mg/day", "$30/person/night": after a number (and its unit)
    r"(\d%?\s?(?:[A-Za-z]{1,5})?)((?:/(?:" + "|".join(sorted(COUNTED_PER, key=len, reverse=True)) + r")\b)+)"
)
_LENGTH = r"\d+(?:\.\d+)?['\u2032\"\u2033](?:\s[WHDL](?![\w-]))?"
_LENGTH_RE = re.compile(r"(\d+(?:\.\d+)?)(['\u2032\"\u2033])(?:\s([WHDL])(?![\w-]))?")
_FEET_INCHES_RE = re.compile(  # 5'10", 22" x 14" x 9", 65" TV, 8' x 10' (not a quotation's closing mark)
    r"\"[^\"]*\"|(?<!\w)'[^'\n]*?'(?!\w)"  # a quotation, skipped whole
    r"|(?<![\w.'\"\u2018\u2019\u201c\u201d])(\d{1,2})['\u2032\u2019]\s?(\d{1,2}(?:\.\d+)?)[\"\u2033\u201d](?!\w)"
    r"|(?<![\w.'\"\u2018\u2019\u201c\u201d])" + _LENGTH + r"(?:\s?[x\u00d7]\s?" + _LENGTH + r")*+(?!\w)"
)
_INCHES_ABBR_RE = re.compile(  # "6 in. of snow" (a full stop before a capital may end "put 2 in.")
    r"(?<![\w.])(\d+(?:\.\d+)?)\s?in\.(?=\s+[a-z\d(]|\s*[,;:)])"
)
NEXT_WORD_RE = re.compile(r"\s+([A-Za-z]+)")
_UNIT_RE = re.compile(
    r"(?<![\w.])(-?)(" + NUM + r")(?:\.(\d+))?\s?("
    + "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True)) + r")(?![\w/])"
)
_RANGE_RE = re.compile(  # "10-20", "5.7-6.4", "5%-10%", "$10-$20"
    r"(?<![\w.,-])((?:" + NUM + r")(?:\.\d+)?%?)(?:-|\s?\u2013\s?)([$€£¥]?(?:" + NUM + r")(?:\.\d+)?)(?![\d_-]|[.,]\d)"
)
_FRACTION_UNIT_RE = re.compile(  # "1/4 tsp" → "1/4 teaspoon" (the fraction read by its own rule)
    r"(?<![\w/.])((?:(" + NUM + r") ?)?(?:\d{1,2}/\d{1,2}|[" + "".join(VULGAR_FRACTIONS) + r"]))(\s?)("
    + "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True)) + r")(?![\w/])"
)
_BLOOD_PRESSURE_RE = re.compile(r"(?<![\w/.])(\d{2,3})/(\d{2,3})(?=\s?mmHg\b)")  # "120/80 mmHg"


def _unit(m: re.Match[str]) -> str:
    """"5 km" → "five kilometers", "1 kg" → "one kilogram", "2.5GB" → "two point five gigabytes"."""
    sign, whole, frac, unit = m.group(1), m.group(2), m.group(3), m.group(4)
    if unit == "m" and not _meters(m) or unit == "cal" and _caliber(m):
        return m.group(0)
    one, many = UNITS[unit]
    amount = ("minus " if sign else "") + cardinal(whole) + (" point " + digit_words(frac) if frac else "")
    race = unit == "m" and _race_follows(m)  # "the one hundred meter dash"
    return f"{amount} {one if whole == '1' and not frac or race else many}"


def _meters(m: re.Match[str]) -> bool:
    """"3,776 m" is meters; "100m" only as a race ("the 100m", "100m dash"): "5m" is as often minutes
    or millions."""
    if m.group(0)[-2].isspace():
        return True
    the = m.string[max(0, m.start() - 4):m.start()].lower() == "the "
    return _race_follows(m) or (the and not m.group(1) and not m.group(3) and m.group(2) in _TRACK_DISTANCES)


def _race_follows(m: re.Match[str]) -> bool:
    after = NEXT_WORD_RE.match(m.string, m.end())
    return bool(after) and after.group(1).lower() in _RACES


def _caliber(m: re.Match[str]) -> bool:
    """"a 50 cal rifle" names a caliber, not calories."""
    after = NEXT_WORD_RE.match(m.string, m.end())
    return bool(after) and after.group(1).lower() in _CALIBER_WORDS


def _amount(number: str) -> str:
    """"1.25" → "one point two five"."""
    whole, _, frac = number.partition(".")
    return cardinal(whole) + (" point " + digit_words(frac) if frac else "")


def _as_adjective(text: str, end: int) -> bool:
    """Whether a length ending at `end` comes before what it measures ("a 65 inch TV"), not before a
    word that makes it a noun ("65 inches with 4K", "6 inches of snow") or no word at all."""
    after = NEXT_WORD_RE.match(text, end)
    return bool(after) and after.group(1).lower() not in _MEASURE_NOT_ADJECTIVE


def _length(amount: str, mark: str, adjective: bool) -> str:
    """"10" and a foot mark → "ten feet" ("ten foot" before what it measures)."""
    one, many = ("foot", "feet") if mark in "'\u2032" else ("inch", "inches")
    return f"{_amount(amount)} {one if adjective or amount == '1' else many}"


def _feet_and_inches(m: re.Match[str]) -> str:
    """5'10" → "five feet ten inches"; 22" x 14" x 9" → "twenty-two by fourteen by nine inches";
    36" W x 70" H → "thirty-six inches wide by seventy inches high". A quotation is left as it is: its
    closing mark after a number ("call 911"") is no inch mark."""
    if m.group(0)[0] in "'\"":
        return m.group(0)
    adjective = _as_adjective(m.string, m.end())
    if m.group(1):
        return _length(m.group(1), "'", False) + " " + _length(m.group(2), '"', False)
    lengths = _LENGTH_RE.findall(m.group(0))
    if len(lengths) > 1 and len({mark for _, mark, _ in lengths}) == 1 and not any(label for *_, label in lengths):
        *first, (amount, mark, _) = lengths  # one unit for all: "eight by ten feet"
        return " by ".join([_amount(a) for a, *_ in first] + [_length(amount, mark, adjective)])
    last = len(lengths) - 1
    return " by ".join(
        _length(amount, mark, adjective and i == last and not label) + (f" {_LABELS[label]}" if label else "")
        for i, (amount, mark, label) in enumerate(lengths)
    )


def _inches_abbreviation(m: re.Match[str]) -> str:
    """"6 in. of snow" → "six inches of snow", "a 2 in. pipe" → "a two inch pipe"."""
    return _length(m.group(1), '"', _as_adjective(m.string, m.end()))


def _fraction_unit(m: re.Match[str]) -> str:
    """"1/4 tsp" → "1/4 teaspoon", "2 ¾ tsp" → "2 ¾ teaspoons": the unit after a fraction in words
    (`_UNIT_RE` reads a unit only after a whole or decimal number)."""
    one, many = UNITS[m.group(4)]
    return f"{m.group(1)} {many if m.group(2) else one}"


def _range(m: re.Match[str]) -> str:
    """"10-20" → "10 to 20", "$10-$20" → "$10 to $20" (each number read by the rules after this one:
    years as years)."""
    return f"{m.group(1)} to {m.group(2)}"


PER = (
    _PER_RE,
    lambda m: m.group(1) + "".join(" per " + COUNTED_PER[unit] for unit in m.group(2).split("/")[1:]),
)
BLOOD_PRESSURE = (_BLOOD_PRESSURE_RE, lambda m: f"{m.group(1)} over {m.group(2)}")
FRACTION_UNIT = (_FRACTION_UNIT_RE, _fraction_unit)
RANGE = (_RANGE_RE, _range)
FEET_INCHES = (_FEET_INCHES_RE, _feet_and_inches)
INCHES_ABBR = (_INCHES_ABBR_RE, _inches_abbreviation)
UNIT = (_UNIT_RE, _unit)
