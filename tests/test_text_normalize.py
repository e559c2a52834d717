"""Text normalization on sentences users actually send."""

import pytest

from serve_app.text.normalize import normalize_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "Dr. Smith paid $3.50 on May 5th, 1999!!!",
            "Doctor Smith paid three dollars and fifty cents on May fifth, nineteen ninety-nine!",
        ),
        ("It costs $1 or $0.99.", "It costs one dollar or ninety-nine cents."),
        ("$1,234.05", "one thousand two hundred and thirty-four dollars and five cents"),
        ("The budget is $1.5 million.", "The budget is one point five million dollars."),
        ("£3 and €2.5", "three pounds and two euros and fifty cents"),
        ("In the 1990s, 50% agreed.", "In the nineteen nineties, fifty percent agreed."),
        (
            "He was 21st of 2,000 runners in 2024.",
            "He was twenty-first of two thousand runners in twenty twenty-four.",
        ),
        ("Pi is 3.14 and -5 is negative.", "Pi is three point one four and minus five is negative."),
        ("No. 7 e.g. this & that", "number seven for example this and that"),
        ("Mrs. Jones vs. Mr. Brown", "Missus Jones versus Mister Brown"),
        ("Wait... what?!?! Really??", "Wait. what? Really?"),
        ("  spaced   out  ,  text  ", "spaced out, text"),
        ("It raised £3.5M, then $10k and $3bn.", "It raised three point five million pounds, then ten thousand dollars and three billion dollars."),
        ("That is 3.50 USD or 100 EUR.", "That is three dollars and fifty cents or one hundred euros."),
        ("Meet at 3:45 p.m. or 10:00 AM, not 9:05.", "Meet at three forty-five p.m. or ten AM, not nine oh five."),
        ("The train leaves at 15:30; lunch at 12:00.", "The train leaves at fifteen thirty; lunch at twelve o'clock."),
        ("Due 12/31/2025, 31/12/2025 or 2025-12-31.",
         ("Due December thirty-first, twenty twenty-five, December thirty-first, twenty twenty-five or "
          "December thirty-first, twenty twenty-five.")),
        ("Call (555) 123-4567 or +1 555-123-4567.",
         ("Call five five five, one two three, four five six seven or plus one, five five five, one two three, "
          "four five six seven.")),
        ("On Jan. 5 and May 31 see pp. 10.", "On January fifth and May thirty-first see pages ten."),
        ("Mt. Everest is -20°C; the score was 3:2.", "Mount Everest is minus twenty degrees Celsius; the score was three to two."),
    ],
)
def test_normalizes_real_sentences(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Upgrade to v2.13.0 today.", "Upgrade to version two point thirteen point zero today."),
        ("See section 1.2.3 and API v2.", "See section one point two point three and API version two."),
        ("Ping 192.168.0.1 now.", "Ping one nine two dot one six eight dot zero dot one now."),
        ("Call 555-1234 or 1-800-555-1234.",
         "Call five five five, one two three four or one, eight zero zero, five five five, one two three four."),
        ("COVID-19 and F-16 jets", "COVID-nineteen and F-sixteen jets"),
        ("10-20 people in 2020-2024, pages 3 \u2013 5",
         "ten to twenty people in twenty twenty to twenty twenty-four, pages three to five"),
        ("Compute 5 - 3.", "Compute five - three."),
        ("Wait 10-20 min, walk 5-10 km, come 3-4pm, from 3:45-4:15.",
         "Wait ten to twenty minutes, walk five to ten kilometers, come three to four p.m., from three forty-five to four fifteen."),
        ("Run 5 km, lift 1 kg, store 2.5GB at 100 mph.",
         "Run five kilometers, lift one kilogram, store two point five gigabytes at one hundred miles per hour."),
        ("3x faster on a 1920x1080 screen", "three times faster on a one thousand nine hundred and twenty by one thousand and eighty screen"),
        ("Add 1/2 cup, 3/4 of them, 2/3 done, open 24/7.",
         "Add one half cup, three quarters of them, two thirds done, open twenty-four seven."),
        ("Our #1 fan", "Our number one fan"),
        ("See https://www.example.com/docs/api?x=1. Or (http://foo.io/a).",
         "See example dot com slash docs slash api. Or (foo dot io slash a)."),
        ("Mail ana.b@example.co.uk now.", "Mail ana dot b at example dot co dot uk now."),
        ("In 2024, we won; 2,024 votes.", "In twenty twenty-four, we won; two thousand and twenty-four votes."),
        ("Wake at 9am, sleep at 11 PM, eat at 3:45pm.", "Wake at nine a.m., sleep at eleven PM, eat at three forty-five p.m."),
        ("Due 31.12.2025.", "Due December thirty-first, twenty twenty-five."),
        ("He lives on Main St. in town near 5th Ave., not St. John's.",
         "He lives on Main Street in town near fifth Avenue, not Saint John's."),
        ("Go to 12 Elm Rd.", "Go to twelve Elm Road."),
        ("Apples, pears, etc. Then more etc. and so on.", "Apples, pears, et cetera. Then more et cetera and so on."),
        ("the 5G network, 0x1F and 5 min later", "the 5G network, 0x1F and five minutes later"),
    ],
)
def test_versions_units_ranges_and_abbreviations(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_title_abbreviation_at_sentence_end_is_left_alone() -> None:
    # "Dr." not followed by a name is not a title; expanding it would change the meaning.
    assert normalize_text("He went to see the Dr.") == "He went to see the Dr."


def test_non_year_numbers_read_as_cardinals() -> None:
    assert (
        normalize_text("555 and 12345")
        == "five hundred and fifty-five and twelve thousand three hundred and forty-five"
    )
    assert normalize_text("1999%") == "one thousand nine hundred and ninety-nine percent"


def test_plain_text_is_unchanged() -> None:
    text = "Hello there, how are you today?"
    assert normalize_text(text) == text
