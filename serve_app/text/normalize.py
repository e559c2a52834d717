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
# "St. John" is "Saint John". The others name nothing else, so they are read before a capitalised word
# too ("Pennsylvania Ave. NW"), with or without their full stop.
_STREETS = {"St": "Street", "Ave": "Avenue", "Rd": "Road", "Blvd": "Boulevard", "Ln": "Lane"}
_OTHER_STREETS = {"Ave": "Avenue", "Rd": "Road", "Blvd": "Boulevard", "Ln": "Lane", "Hwy": "Highway",
                  "Pkwy": "Parkway", "Ct": "Court", "Pl": "Place"}
_COMPASS = {"NW": "Northwest", "NE": "Northeast", "SW": "Southwest", "SE": "Southeast"}
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
_BUSINESS = {"YoY": "year over year", "MoM": "month over month", "QoQ": "quarter over quarter"}
# Clothing sizes, read as a list ("S/M/L/XL" → "S, M, L or XL").
_SIZES = ("XXS", "XS", "S", "M", "L", "XL", "XXL", "XXXL", "2XL", "3XL", "4XL")
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
_OF_A_FRACTION = {"of", "the", "a", "an", "cup", "cups", "inch", "inches", "mile", "miles", "pound", "pounds"}
_LABELS = {"W": "wide", "H": "high", "D": "deep", "L": "long"}  # "36\" W x 70\" H"
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
# What an amount is counted per, after a slash ("$5/mo", "500 mg/day"): abbreviation → word.
_PER = {"mo": "month", "month": "month", "wk": "week", "week": "week", "day": "day", "hr": "hour",
        "hour": "hour", "yr": "year", "year": "year", "night": "night", "person": "person", "user": "user",
        "seat": "seat", "s": "second", "sec": "second", "min": "minute", "kg": "kilogram", "lb": "pound"}
_TIME_UNITS = ("second", "minute", "hour", "day", "week", "month", "year")
# Time units that a plural before a slash is counted per ("requests/day"; "day/night" is a choice).
_PER_TIME = {unit for unit, word in _PER.items() if word in _TIME_UNITS} | set(_TIME_UNITS)

_NUM = r"\d{1,3}(?:,\d{3})+|\d+"  # 1,234,567 or 1234567
_TITLE_RE = re.compile(r"\b(" + "|".join(_TITLES) + r")\.\s+(?=[A-Z])")
_ANYWHERE_RE = re.compile("|".join(r"(?<!\w)" + re.escape(k) for k in _ANYWHERE))
_STREET_RE = re.compile(
    r"\b([A-Z][a-z]+|\d+(?:st|nd|rd|th))\s+(" + "|".join(_STREETS) + r")\.(?=\s*$|\s*[,;:!?)]|\s+[a-z\d])"
)
_OTHER_STREET_RE = re.compile(  # "Pennsylvania Ave. NW", "5th Ave", "Elm Rd."
    r"\b([A-Z][a-z]+|\d+(?:st|nd|rd|th))\s+(" + "|".join(_OTHER_STREETS) + r")\b(\.?)(?:\s+(" + "|".join(_COMPASS)
    + r")\b)?"
)
_APARTMENT_RE = re.compile(r"\b(Apt|Ste)\.?\s*(?=#?\d|[A-Z]\d)")  # "Apt. 4B", "Ste 200"
_CIRCA_RE = re.compile(r"(?<![\w.])(?:c|ca)\.\s?(?=\d{3,4}s?\b)")  # "c. 1920"
_QUARTER_RE = re.compile(r"\bQ([1-4])\b")  # "Q3"
_FISCAL_YEAR_RE = re.compile(r"\bFY\s?'?(\d{4}|\d{2})\b")  # "FY24", "FY 2024"
_BUSINESS_RE = re.compile(r"\b(" + "|".join(_BUSINESS) + r")\b")
_HASHTAG_RE = re.compile(r"(?<![\w#&/])#([A-Za-z][A-Za-z0-9_]*)")  # "#AcmeHelps" (not "#1", "C#")
_CAMEL_RE = re.compile(r"(?<=[a-z]{2})(?=[A-Z])|(?<=[A-Za-z])(?=\d)|(?<=[A-Z])(?=[A-Z][a-z])")
_MENU_PATH_RE = re.compile(  # "Settings > Billing > Plans", "in Settings > Billing" (not "if Revenue > Costs")
    r"\b((?i:in|to|under|open|tap|click|select|choose|via|at|from|then|go)\s+)?"
    r"\b[A-Z][a-z][\w'&-]*(?:\s+>\s+[A-Z][a-z][\w'&-]*)+"
)
_MENU_STEP_RE = re.compile(r"\s+>\s+")
_SIZES_RE = re.compile(
    r"(?<![\w/])(?:" + "|".join(_SIZES) + r")(?:/(?:" + "|".join(_SIZES) + r")){2,}+(?![\w/])"
)
_SLASH_WORDS_RE = re.compile(r"(?<![\w/.@:~-])[A-Za-z]{2,}+(?:/[A-Za-z]{2,}+)++(?![\w/]|\.\w)")  # "black/white"
_VERSION_RE = re.compile(r"(?<![\w.])(?:(v)(\d+(?:\.\d+)*)|(\d+(?:\.\d+){2,}))(?![\w]|\.\d)")
_HASH_NUMBER_RE = re.compile(r"#(?=\d)")
_PER_RE = re.compile(  # "$5/mo", "500 mg/day", "$30/person/night": after a number (and its unit)
    r"(\d%?\s?(?:[A-Za-z]{1,5})?)((?:/(?:" + "|".join(sorted(_PER, key=len, reverse=True)) + r")\b)+)"
)
_RATING_RE = re.compile(  # "4.5/5", "4/5 stars" (a plain "4/5" is a fraction)
    r"(?<![\w./])(\d{1,2}\.\d|\d{1,2}(?=/(?:5|10) stars?\b))/(5|10)(?![\w/]|\.\d)"
)
_MONTH_DAY_NUMBER = r"(0?[1-9]|1[0-2])/(0?[1-9]|[12]\d|3[01])(?![\w/]|\.\d)"
_SHORT_DATE_RE = re.compile(  # "due 3/15", "from 12/22 to 1/2" (a plain "3/15" is a fraction)
    r"\b(?:((?i:on|until|till|through|thru|due|since|starting|effective|expires?|ends|renews?|begins|starts|"
    r"as of|end of day|EOD|COB)|" + "|".join(dict.fromkeys(_WEEKDAYS.values())) + r")|((?i:by|from|before|after)))(,?\s+)"
    + _MONTH_DAY_NUMBER + r"(?:(\s*(?:-|\u2013|to|through|until|thru)\s*)(?<![\w/])" + _MONTH_DAY_NUMBER + ")?"
)
_DURATION_RE = re.compile(  # "finished in 3:05:42", "a time of 2:00:35"
    r"\b((?i:in|took|takes|take|taking|lasted|lasts|lasting|clocked(?:\s+in\s+at)?"
    r"|(?:time|record|duration|runtime|length)(?:\s+(?:of|was|is))?:?)"
    r"(?:\s+(?:just|about|under|over|around|only|roughly))?\s+)"
    r"(\d{1,2}):([0-5]\d):([0-5]\d)(?![\d:]|\.\d|\s+format\b)"
)
_INTERNATIONAL_PHONE_RE = re.compile(  # "+44 20 7946 0958" (a North American number is `_PHONE_RE`'s)
    r"(?<![\w+])\+(\d{1,3})((?:[ -]\d{1,8}){2,6}+)(?![\w%]|[-.,]\d)"
)
_LEADING_DOT_DECIMAL_RE = re.compile(r"(?<![^\s(])\.(\d+)\b(?![.,]\d)")  # "batting .312"
_SUPERSCRIPT_RE = re.compile(r"(?<=[\w)])([⁻]?[⁰¹²³⁴⁵⁶⁷⁸⁹]++)")  # "10²³", "x²"
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
_NEXT_WORD_RE = re.compile(r"\s+([A-Za-z]+)")
_SENTENCE_END_RE = re.compile(r"\s*\Z|\s+[A-Z]")
_NAME_FOLLOWS_RE = re.compile(r"\s+[A-Z][a-z]")
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
_FRACTION_UNIT_RE = re.compile(  # "1/4 tsp" → "1/4 teaspoon" (the fraction read by its own rule)
    r"(?<![\w/.])((?:(" + _NUM + r") ?)?(?:\d{1,2}/\d{1,2}|[" + "".join(_VULGAR) + r"]))(\s?)("
    + "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True)) + r")(?![\w/])"
)
_BLOOD_PRESSURE_RE = re.compile(r"(?<![\w/.])(\d{2,3})/(\d{2,3})(?=\s?mmHg\b)")  # "120/80 mmHg"
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
# A space before a mark that ends a word goes ("out , text"), but not after another mark ("e.g., !, @")
# nor before a mark that starts a word (".venv", ".312").
_SPACE_BEFORE_PUNCT_RE = re.compile(r"(?<![\s!?.,;:])\s+([!?.,;:])(?!\w)")


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
    if unit == "m" and not _meters(m) or unit == "cal" and _caliber(m):
        return m.group(0)
    one, many = _UNITS[unit]
    amount = ("minus " if sign else "") + _words(whole) + (" point " + _digit_words(frac) if frac else "")
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
    after = _NEXT_WORD_RE.match(m.string, m.end())
    return bool(after) and after.group(1).lower() in _RACES


def _caliber(m: re.Match[str]) -> bool:
    """"a 50 cal rifle" names a caliber, not calories."""
    after = _NEXT_WORD_RE.match(m.string, m.end())
    return bool(after) and after.group(1).lower() in _CALIBER_WORDS


def _times(m: re.Match[str]) -> str:
    """"3x faster" → "three times faster"; "1920x1080" → "... by ..."."""
    if m.group(2):
        return f"{_words(m.group(1))} by {_words(m.group(2))}"
    return f"{_words(m.group(1))} times"


def _amount(number: str) -> str:
    """"1.25" → "one point two five"."""
    whole, _, frac = number.partition(".")
    return _words(whole) + (" point " + _digit_words(frac) if frac else "")


def _as_adjective(text: str, end: int) -> bool:
    """Whether a length ending at `end` comes before what it measures ("a 65 inch TV"), not before a
    word that makes it a noun ("65 inches with 4K", "6 inches of snow") or no word at all."""
    after = _NEXT_WORD_RE.match(text, end)
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
    after = _NEXT_WORD_RE.match(m.string, m.end(5))
    return bool(after) and (after.group(1).lower() in _OF_A_FRACTION or after.group(1) in _UNITS)


_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _valid_day(month: int, day: int) -> bool:
    return 1 <= month <= 12 and 1 <= day <= _DAYS_IN_MONTH[month - 1]


def _duration(m: re.Match[str]) -> str:
    """"in 3:05:42" → "in three hours, five minutes and forty-two seconds" (zero parts not read)."""
    parts = [
        f"{_words(value)} {name if value == 1 else name + 's'}"
        for value, name in zip((int(m.group(2)), int(m.group(3)), int(m.group(4))), ("hour", "minute", "second"))
        if value
    ] or ["zero seconds"]
    spoken = parts[-1] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return m.group(1) + spoken


def _international_phone(m: re.Match[str]) -> str:
    """"+44 20 7946 0958" → "plus four four, two zero, seven nine four six, zero nine five eight"
    (a number of 8 to 15 digits, as telephone numbers are; others as they were)."""
    groups = [m.group(1)] + m.group(2).split()
    groups = [g for part in groups for g in part.split("-") if g]
    if not 8 <= sum(len(g) for g in groups) <= 15:
        return m.group(0)
    return "plus " + ", ".join(_digit_words(g) for g in groups)


def _superscript(m: re.Match[str]) -> str:
    """"x²" → " squared", "10²³" → " to the power of 23" (the number read by a later rule)."""
    power = m.group(1).translate(_SUPERSCRIPTS)
    if power in ("2", "3"):
        return " squared" if power == "2" else " cubed"
    return " to the power of " + power.replace("-", "minus ")


def _hashtag(m: re.Match[str]) -> str:
    """"#AcmeHelps" → "hashtag Acme Helps"; capitals with digits ("#A1B2C3", a ticket) or a colour
    ("#fff", "#a0b1c2") are no hashtag."""
    tag = m.group(1)
    ticket = tag.upper() == tag and any(c.isdigit() for c in tag)
    colour = len(tag) in (3, 6, 8) and all(c in "0123456789abcdefABCDEF" for c in tag)
    if ticket or colour:
        return m.group(0)
    return "hashtag " + _CAMEL_RE.sub(" ", tag).replace("_", " ")


def _slash_words(m: re.Match[str]) -> str:
    """"black/white/red" → "black, white or red", "and/or" → "and or", "requests/day" → "requests per
    day"; acronyms ("I/O", "TCP/IP") and units ("mg/dL") are left as written."""
    words = m.group(0).split("/")
    if any(w.isupper() or w in _UNITS or w in _WEEKDAYS or w in ("mo", "wk") for w in words):
        return m.group(0)
    if len(words) == 2 and words[1] in _PER_TIME and words[0].endswith("s"):
        return f"{words[0]} per {_PER.get(words[1], words[1])}"
    if "and" in words or "or" in words:
        return " ".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def _menu_path(m: re.Match[str]) -> str:
    """"Settings > Billing > Plans" → "Settings, then Billing, then Plans": a path of two steps or more,
    or one after "in", "to", "tap"...; a single ">" between capitalised words may be a comparison."""
    if not m.group(1) and m.group(0).count(">") < 2:
        return m.group(0)
    return _MENU_STEP_RE.sub(", then ", m.group(0))


def _fiscal_year(m: re.Match[str]) -> str:
    """"FY2024" → "fiscal year twenty twenty-four", "FY24" → "fiscal year twenty-four", "FY05" → "fiscal
    year oh five"."""
    year = m.group(1)
    if len(year) == 4:
        return "fiscal year " + num2words(int(year), to="year")
    return "fiscal year " + (f"oh {_words(year[1])}" if year[0] == "0" and year != "00" else _words(year))


def _other_street(m: re.Match[str]) -> str:
    """"Pennsylvania Ave. NW" → "Pennsylvania Avenue Northwest"; a full stop that may end the sentence
    (before a capital, or the text's end) is kept. Without a full stop, before a name, it is no street."""
    if not m.group(3) and not m.group(4) and _NAME_FOLLOWS_RE.match(m.string, m.end()):
        return m.group(0)  # "Ave Maria"
    spoken = f"{m.group(1)} {_OTHER_STREETS[m.group(2)]}"
    if m.group(4):
        return f"{spoken} {_COMPASS[m.group(4)]}"
    return spoken + ("." if m.group(3) and _SENTENCE_END_RE.match(m.string, m.end()) else "")


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


def _fraction_unit(m: re.Match[str]) -> str:
    """"1/4 tsp" → "1/4 teaspoon", "2 ¾ tsp" → "2 ¾ teaspoons": the unit after a fraction in words
    (`_UNIT_RE` reads a unit only after a whole or decimal number)."""
    one, many = _UNITS[m.group(4)]
    return f"{m.group(1)} {many if m.group(2) else one}"


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
    (_HASHTAG_RE, _hashtag),
    (_MENU_PATH_RE, _menu_path),
    (_STREET_RE, _street),
    (_OTHER_STREET_RE, _other_street),
    (_APARTMENT_RE, lambda m: {"Apt": "apartment ", "Ste": "suite "}[m.group(1)]),
    (_CIRCA_RE, "circa "),
    (_QUARTER_RE, lambda m: "Q " + _words(m.group(1))),
    (_FISCAL_YEAR_RE, _fiscal_year),
    (_BUSINESS_RE, lambda m: _BUSINESS[m.group(1)]),
    (_TITLE_RE, lambda m: _TITLES[m.group(1)] + " "),
    (_MOUNT_RE, "Mount "),
    (_ANYWHERE_RE, _anywhere),
    (_NO_RE, "number "),
    (_HASH_NUMBER_RE, "number "),
    (_PER_RE, lambda m: m.group(1) + "".join(" per " + _PER[unit] for unit in m.group(2).split("/")[1:])),
    (_SIZES_RE, lambda m: ", ".join(m.group(0).split("/")[:-1]) + " or " + m.group(0).rsplit("/", 1)[1]),
    (_SLASH_WORDS_RE, _slash_words),
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
    (_INTERNATIONAL_PHONE_RE, _international_phone),
    (_VERSION_RE, _version),
    (_ISO_DATE_RE, _iso_date),
    (_SLASH_DATE_RE, _slash_date),
    (_SHORT_DATE_RE, _short_date),  # before fractions
    (_BLOOD_PRESSURE_RE, lambda m: f"{m.group(1)} over {m.group(2)}"),
    (_FRACTION_UNIT_RE, _fraction_unit),
    (_MIXED_FRACTION_RE, _mixed_fraction),
    (_VULGAR_RE, _vulgar),
    (_FRACTION_RE, _fraction),
    (_RANGE_RE, _range),  # before the rules that read a number with what follows it ("10-20 min")
    (_MERIDIEM_RANGE_RE, r"\1 to "),
    (_FEET_INCHES_RE, _feet_and_inches),  # after ranges ("2-3\" thick"), before "x" as "times"
    (_INCHES_ABBR_RE, _inches_abbreviation),
    (_DURATION_RE, _duration),  # before clock times
    (_TIME_RE, _time),
    (_CLOCK_HOUR_RE, _clock_hour),
    (_RATIO_RE, lambda m: f"{_words(m.group(1))} to {_words(m.group(2))}"),
    (_CODE_FIRST_RE, lambda m: _CODES[m.group(1)]),
    (_MONTH_DAY_RE, _month_day),
    (_CODE_RE, _money_code),
    (_NEGATIVE_MONEY_RE, "minus "),
    (_MONEY_RE, _money),
    (_UNIT_RE, _unit),  # before superscripts: "m²" is "square meters"
    (_SUPERSCRIPT_RE, _superscript),
    (_TIMES_RE, _times),
    (_ORDINAL_RE, _ordinal),
    (_DECADE_RE, _decade),
    (_SHORT_DECADE_RE, lambda m: _words(m.group(1))[:-1] + "ies"),
    (_YEAR_RE, _year),
    (_LEADING_DOT_DECIMAL_RE, lambda m: "point " + _digit_words(m.group(1))),
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
