"""Markdown from a language model's reply, as a listener should hear it (through `normalize_text`)."""

import pytest

from serve_app.text.markdown import speakable_markdown
from serve_app.text.normalize import normalize_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("**Hello** there, _world_! ***Very*** ~~old~~ news.", "Hello there, world! Very old news."),
        ("# Title\n\nSome text.", "Title. Some text."),
        ("## Steps\n- Open the box\n* Take it out:\n+ Done!", "Steps. Open the box. Take it out: Done!"),
        ("1. Buy milk\n2) Buy eggs", "Buy milk. Buy eggs."),
        ("Run `pip install x` now.", "Run pip install x now."),
        ("See [the docs](https://example.com/docs) and ![a cat](cat.png).", "See the docs and a cat."),
        ("> Quoted\n> > nested", "Quoted. nested."),
        ("| Name | Age |\n|:---|---:|\n| Bob | 42 |", "Name, Age. Bob, forty-two."),
        ("Before\n```python\nx = 1\n```\n---\nAfter", "Before x equals one After"),
        ("Great job 👍🏽! 🇺🇸 Thanks ❤️", "Great job! Thanks"),
        ("**Today in Boston** 🌦️\n- High: 72°F\n- Low: 58°F", "Today in Boston. High: seventy-two degrees Fahrenheit. Low: fifty-eight degrees Fahrenheit."),
        ("Thanks for asking\n\nHere is why\n\n", "Thanks for asking. Here is why"),
        ("### Install\n```bash\npip install x\n```\n### Run\nDone", "Install. pip install x. Run. Done"),
        ("Setext Title\n============\nText", "Setext Title. Text"),
        ("- [ ] pack bags\n- [x] book hotel", "pack bags. book hotel."),
        ("Status: Processing ⏳ ⌛ ⭐⭐⭐ ▶️ ‼️", "Status: Processing"),
    ],
)
def test_markdown_is_read_as_its_words(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2 * 3 * 4 and 5*3*2",
        "my_var_name is snake_case",
        "-5 degrees and a - b",
        "#1 fan, C# and F#",
        "Hello there, how are you today?",
        "Line one\nLine two",
        "The 3.5 release (see section 2) is <out>.",
    ],
)
def test_text_without_markdown_passes_unchanged(text: str) -> None:
    assert speakable_markdown(text) == text


def test_normalize_false_keeps_the_markup(tmp_path) -> None:
    from tests.support_api import FakeEngine, make_client

    engine = FakeEngine()
    client = make_client(tmp_path, engine)
    assert client.post("/speak", json={"text": "**Bold** move.", "normalize": False}).status_code == 200
    assert client.post("/speak", json={"text": "**Bold** move."}).status_code == 200
    assert [q.text for q in engine.requests] == ["**Bold** move.", "Bold move."]
