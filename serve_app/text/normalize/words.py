"""Abbreviations and notation between words: titles ("Dr. Smith"), streets and addresses ("CA 94043",
a ZIP code read digit by digit), "e.g.", "YoY", "No. 5" and "#12345" (an identifier, read digit by digit),
menu paths ("Settings > Billing") and words joined by slashes ("black/white", "S/M/L").

Each abbreviation is expanded only where what surrounds it says which word it is ("St. John" is
Saint, "Main St." Street); anywhere else it is left as written.
"""

from __future__ import annotations

import re

from serve_app.text.normalize.dates import WEEKDAYS
from serve_app.text.normalize.measures import COUNTED_PER, PER_TIME, UNITS
from serve_app.text.normalize.numbers import digit_words

__all__ = [
    "ANYWHERE", "APARTMENT", "BUSINESS", "CIRCA", "HASH_NUMBER", "MENU_PATH", "MOUNT", "NO", "ORDER_NUMBER",
    "OTHER_STREET", "SIZES", "SLASH_WORDS", "STREET", "TITLE", "ZIP_CODE",
]

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
# "St. John" is "Saint John". The others name nothing else, so they are read before a capitalised word
# too ("Pennsylvania Ave. NW"), with or without their full stop.
_STREETS = {"St": "Street", "Ave": "Avenue", "Rd": "Road", "Blvd": "Boulevard", "Ln": "Lane"}
_OTHER_STREETS = {"Ave": "Avenue", "Rd": "Road", "Blvd": "Boulevard", "Ln": "Lane", "Hwy": "Highway",
                  "Pkwy": "Parkway", "Ct": "Court", "Pl": "Place"}
_COMPASS = {"NW": "Northwest", "NE": "Northeast", "SW": "Southwest", "SE": "Southeast"}
# The states' postal abbreviations (and DC's): "Mountain View, CA 94043".
_STATES = ("AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN", "IA",
           "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM",
           "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA",
           "WV", "WI", "WY")
_BUSINESS = {"YoY": "year over year", "MoM": "month over month", "QoQ": "quarter over quarter"}
# Clothing sizes, read as a list ("S/M/L/XL" → "S, M, L or XL").
_SIZES = ("XXS", "XS", "S", "M", "L", "XL", "XXL", "XXXL", "2XL", "3XL", "4XL")
_TITLE_RE = re.compile(r"\b(" + "|".join(_TITLES) + r")\.\s+(?=[A-Z])")
_ANYWHERE_RE = re.compile("|".join(r"(?<!\w)" + re.escape(k) for k in _ANYWHERE))
_STREET_RE = re.compile(
    r"\b([A-Z][a-z]+|\d+(?:st|nd|rd|th))\s+(" + "|".join(_STREETS) + r")\.(?=\s*$|\s*[,;:!?)]|\s+[a-z\d])"
)
_OTHER_STREET_RE = re.compile(  # "Pennsylvania Ave. NW", "5th Ave", "Elm Rd."
    r"\b([A-Z][a-z]+|\d+(?:st|nd|rd|th))\s+(" + "|".join(_OTHER_STREETS) + r")\b(\.?)(?:\s+(" + "|".join(_COMPASS)
    + r")\b)?"
)
_ZIP_CODE_RE = re.compile(  # "CA 94043", "ZIP code: 94043-1351" (not "population 94043")
    r"(\b(?:" + "|".join(_STATES) + r")\s+|\b(?i:zip\s*code|zip|postal\s+code)(?:\s+is)?(?::\s*|\s+))"
    r"(\d{5})(?:-(\d{4}))?(?![\w]|[-.,]\d)"
)
_APARTMENT_RE = re.compile(r"\b(Apt|Ste)\.?\s*(?=#?\d|[A-Z]\d)")  # "Apt. 4B", "Ste 200"
_CIRCA_RE = re.compile(r"(?<![\w.])(?:c|ca)\.\s?(?=\d{3,4}s?\b)")  # "c. 1920"
_BUSINESS_RE = re.compile(r"\b(" + "|".join(_BUSINESS) + r")\b")
_MENU_PATH_RE = re.compile(  # "Settings > Billing > Plans", "in Settings > Billing" (not "if Revenue > Costs")
    r"\b((?i:in|to|under|open|tap|click|select|choose|via|at|from|then|go)\s+)?"
    r"\b[A-Z][a-z][\w'&-]*(?:\s+>\s+[A-Z][a-z][\w'&-]*)+"
)
_MENU_STEP_RE = re.compile(r"\s+>\s+")
_SIZES_RE = re.compile(
    r"(?<![\w/])(?:" + "|".join(_SIZES) + r")(?:/(?:" + "|".join(_SIZES) + r")){2,}+(?![\w/])"
)
_SLASH_WORDS_RE = re.compile(r"(?<![\w/.@:~-])[A-Za-z]{2,}+(?:/[A-Za-z]{2,}+)++(?![\w/]|\.\w)")  # "black/white"
# Five digits or more after "#", "No." or "order number" are an identifier, read digit by digit ("#12345");
# fewer are an amount ("#1", "No. 7").
_IDENTIFIER = r"(\d{5,}+)(?![\w]|[.,]\d)"
_HASH_NUMBER_RE = re.compile(r"#(?=\d)(?:" + _IDENTIFIER + ")?")
_ORDER_NUMBER_RE = re.compile(r"\b([Oo]rder\s+number(?:\s+is)?:?\s+)" + _IDENTIFIER)
_SENTENCE_END_RE = re.compile(r"\s*\Z|\s+[A-Z]")
_NAME_FOLLOWS_RE = re.compile(r"\s+[A-Z][a-z]")
_NO_RE = re.compile(r"\b(?:No|no)\.\s*(?=\d)(?:" + _IDENTIFIER + ")?")
_MOUNT_RE = re.compile(r"\bMt\.\s+(?=[A-Z])")


def _slash_words(m: re.Match[str]) -> str:
    """"black/white/red" → "black, white or red", "and/or" → "and or", "requests/day" → "requests per
    day"; acronyms ("I/O", "TCP/IP") and units ("mg/dL") are left as written."""
    words = m.group(0).split("/")
    if any(w.isupper() or w in UNITS or w in WEEKDAYS or w in ("mo", "wk") for w in words):
        return m.group(0)
    if len(words) == 2 and words[1] in PER_TIME and words[0].endswith("s"):
        return f"{words[0]} per {COUNTED_PER.get(words[1], words[1])}"
    if "and" in words or "or" in words:
        return " ".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def _menu_path(m: re.Match[str]) -> str:
    """"Settings > Billing > Plans" → "Settings, then Billing, then Plans": a path of two steps or more,
    or one after "in", "to", "tap"...; a single ">" between capitalised words may be a comparison."""
    if not m.group(1) and m.group(0).count(">") < 2:
        return m.group(0)
    return _MENU_STEP_RE.sub(", then ", m.group(0))


def _other_street(m: re.Match[str]) -> str:
    """"Pennsylvania Ave. NW" → "Pennsylvania Avenue Northwest"; a full stop that may end the sentence
    (before a capital, or the text's end) is kept. Without a full stop, before a name, it is no street."""
    if not m.group(3) and not m.group(4) and _NAME_FOLLOWS_RE.match(m.string, m.end()):
        return m.group(0)  # "Ave Maria"
    spoken = f"{m.group(1)} {_OTHER_STREETS[m.group(2)]}"
    if m.group(4):
        return f"{spoken} {_COMPASS[m.group(4)]}"
    return spoken + ("." if m.group(3) and _SENTENCE_END_RE.match(m.string, m.end()) else "")


def _street(m: re.Match[str]) -> str:
    """"Main St." → "Main Street", its full stop kept where it also ends the text."""
    stop = "." if not m.string[m.end():].strip() else ""
    return f"{m.group(1)} {_STREETS[m.group(2)]}{stop}"


def _zip_code(m: re.Match[str]) -> str:
    """"CA 94043-1351" → "CA nine four zero four three, one three five one"; "ZIP:94043" → "ZIP: nine
    four zero four three"."""
    spoken = digit_words(m.group(2)) + (", " + digit_words(m.group(3)) if m.group(3) else "")
    return m.group(1) + ("" if m.group(1)[-1].isspace() else " ") + spoken


def _number_sign(m: re.Match[str]) -> str:
    """"#12345" → "number one two three four five"; "#1" → "number " (the amount read by a later rule)."""
    return "number " + (digit_words(m.group(1)) if m.group(1) else "")


def _anywhere(m: re.Match[str]) -> str:
    """"etc." → "et cetera", keeping the full stop where it also ends the sentence."""
    words = _ANYWHERE[m.group(0)]
    end = m.string[m.end():]
    sentence_end = m.group(0) in ("etc.", "Jr.", "Sr.") and (not end.strip() or re.match(r"\s+[A-Z]", end))
    return words + ("." if sentence_end else "")


MENU_PATH = (_MENU_PATH_RE, _menu_path)
STREET = (_STREET_RE, _street)
OTHER_STREET = (_OTHER_STREET_RE, _other_street)
APARTMENT = (_APARTMENT_RE, lambda m: {"Apt": "apartment ", "Ste": "suite "}[m.group(1)])
CIRCA = (_CIRCA_RE, "circa ")
BUSINESS = (_BUSINESS_RE, lambda m: _BUSINESS[m.group(1)])
TITLE = (_TITLE_RE, lambda m: _TITLES[m.group(1)] + " ")
MOUNT = (_MOUNT_RE, "Mount ")
ANYWHERE = (_ANYWHERE_RE, _anywhere)
NO = (_NO_RE, _number_sign)
HASH_NUMBER = (_HASH_NUMBER_RE, _number_sign)
ORDER_NUMBER = (_ORDER_NUMBER_RE, lambda m: m.group(1) + digit_words(m.group(2)))
ZIP_CODE = (_ZIP_CODE_RE, _zip_code)
SIZES = (_SIZES_RE, lambda m: ", ".join(m.group(0).split("/")[:-1]) + " or " + m.group(0).rsplit("/", 1)[1])
SLASH_WORDS = (_SLASH_WORDS_RE, _slash_words)
