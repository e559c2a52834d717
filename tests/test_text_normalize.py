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
