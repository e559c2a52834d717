"""What people are reached at: URLs, email addresses, hashtags, handles and phone numbers.

Phone numbers and their extensions are read digit by digit in their groups, as they are dialled; a URL
is read by its host and path, without the scheme, "www", query or fragment.
"""

from __future__ import annotations

import re

from serve_app.text.normalize.numbers import digit_words

__all__ = ["EMAIL", "EMERGENCY", "EXTENSION", "HANDLE", "HASHTAG", "INTERNATIONAL_PHONE", "PHONE", "URL"]

_HASHTAG_RE = re.compile(r"(?<![\w#&/])#([A-Za-z][A-Za-z0-9_]*)")  # "#AcmeHelps" (not "#1", "C#")
_HANDLE_RE = re.compile(r"(?<![\w@])@(\w+)")  # "@sam_altman" (an e-mail address is `_EMAIL_RE`'s)
_X_EXTENSION = r"(?:\s?x(\d+))?"  # "555-0199 x42": an "x" is an extension only right after a phone number
_EXTENSION_RE = re.compile(r"\b(?:ext|Ext|EXT)\.\s*(\d+)(?![\w]|[-.,]\d)")  # "ext. 42"
_CAMEL_RE = re.compile(r"(?<=[a-z]{2})(?=[A-Z])|(?<=[A-Za-z])(?=\d)|(?<=[A-Z])(?=[A-Z][a-z])")
_INTERNATIONAL_PHONE_RE = re.compile(  # "+44 20 7946 0958" (a North American number is `_PHONE_RE`'s)
    r"(?<![\w+])\+(\d{1,3})((?:[ -]\d{1,8}){2,6}+)" + _X_EXTENSION + r"(?![\w%]|[-.,]\d)"
)
_EMERGENCY_RE = re.compile(r"\b((?:call|dial|text|Call|Dial|Text)\s+)(911|999|112)\b")  # "call 911"
_URL_RE = re.compile(r"\bhttps?://(?:www\.)?([^\s/?#]+)((?:/[^\s?#]*)?)(?:[?#]\S*)?")
_EMAIL_RE = re.compile(r"(?<![\w.+-])([\w.+-]+)@((?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,})\b")
_PHONE_RE = re.compile(
    r"(?:(?<![\w+])(\+?1[\s.-]?)?\(?(\d{3})(?:\)[\s.-]?|[\s.-])(\d{3})[\s.-](\d{4})"  # (555) 123-4567
    r"|(?<![\w+().-])()()(\d{3})-(\d{4}))"  # 555-1234
    + _X_EXTENSION + r"(?![\w]|[-.]\d)"
)


def _extension(digits: str) -> str:
    """"42" → "extension four two", as it is dialled."""
    return "extension " + digit_words(digits)


def _with_extension(spoken: str, extension: str | None) -> str:
    """A phone number read, then its extension ("x42") where it has one."""
    return f"{spoken} {_extension(extension)}" if extension else spoken


def _phone(m: re.Match[str]) -> str:
    """Digit by digit, a pause between the groups: "five five five, one two three, four five six seven"
    (and its extension: "... four five six seven extension four two")."""
    prefix, area, exchange, line = m.group(1), m.group(2), m.group(3) or m.group(7), m.group(4) or m.group(8)
    groups = ([prefix.strip(" .-")] if prefix else []) + ([area] if area else []) + [exchange, line]
    return _with_extension(", ".join(digit_words(group) for group in groups), m.group(9))


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
    """"ana.b@example.co.uk" → "ana dot b at example dot co dot uk"; every character of the address
    counts, so an underscore is read ("a_b@example.com" → "a underscore b at ...", unlike a handle's)."""
    local = m.group(1).replace(".", " dot ").replace("_", " underscore ")
    return f"{' '.join(local.split())} at {m.group(2).replace('.', ' dot ')}"


def _international_phone(m: re.Match[str]) -> str:
    """"+44 20 7946 0958" → "plus four four, two zero, seven nine four six, zero nine five eight"
    (a number of 8 to 15 digits, as telephone numbers are; others as they were)."""
    groups = [m.group(1)] + m.group(2).split()
    groups = [g for part in groups for g in part.split("-") if g]
    if not 8 <= sum(len(g) for g in groups) <= 15:
        return m.group(0)
    return _with_extension("plus " + ", ".join(digit_words(g) for g in groups), m.group(3))


def _hashtag(m: re.Match[str]) -> str:
    """"#AcmeHelps" → "hashtag Acme Helps"; capitals with digits ("#A1B2C3", a ticket) or a colour
    ("#fff", "#a0b1c2") are no hashtag."""
    tag = m.group(1)
    ticket = tag.upper() == tag and any(c.isdigit() for c in tag)
    colour = len(tag) in (3, 6, 8) and all(c in "0123456789abcdefABCDEF" for c in tag)
    if ticket or colour:
        return m.group(0)
    return "hashtag " + _CAMEL_RE.sub(" ", tag).replace("_", " ")


def _handle(m: re.Match[str]) -> str:
    """"@sam_altman" → "@sam altman": its underscores read as spaces (an e-mail address's are read,
    `_email`); the "@" is read as "at" with the other symbols (`symbols.SYMBOLS`)."""
    return "@" + m.group(1).replace("_", " ")


URL = (_URL_RE, _url)
EMAIL = (_EMAIL_RE, _email)
HASHTAG = (_HASHTAG_RE, _hashtag)
HANDLE = (_HANDLE_RE, _handle)
EXTENSION = (_EXTENSION_RE, lambda m: _extension(m.group(1)))
EMERGENCY = (_EMERGENCY_RE, lambda m: m.group(1) + digit_words(m.group(2)))
PHONE = (_PHONE_RE, _phone)
INTERNATIONAL_PHONE = (_INTERNATIONAL_PHONE_RE, _international_phone)
