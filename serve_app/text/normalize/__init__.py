"""Spell out what a speech model reads badly: Markdown (`serve_app.text.markdown`), numbers, money,
times, dates, phone numbers, ordinals, years, units and abbreviations.

CSM reads raw text; "$3.50" or "5th" tokenize into pieces the model never learned to voice, so the
API rewrites them into words before generation (`normalize: false` opts out). The rules are
deliberately conservative English rules: anything they do not recognise is left untouched.

Each domain module (numbers, fractions, money, clock, dates, contacts, measures, words, symbols)
defines its rules as (pattern, replacement) pairs; `rules` runs them in one fixed order.
"""

from __future__ import annotations

from serve_app.text.normalize.rules import normalize_text

__all__ = ["normalize_text"]
