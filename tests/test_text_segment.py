"""Long text into segments, streamed text released at certain boundaries, break tags, the lexicon."""

from __future__ import annotations

import itertools

import pytest

from serve_app.text.breaks import BreakTagError, find_break, pending_tag_start
from serve_app.text.lexicon import Lexicon, LexiconError
from serve_app.text.segment import Pause, SegmentPolicy, TextFeed, Utterance, split_script

STORY = (
    "Dr. Smith went to Washington D.C. on a Monday. He said: \"Hello, world!\" Then he left. "
    "It cost $3.50 per item, e.g. apples. The U.S. is big. Mr. J. R. Tolkien wrote books. "
)


def utterances(items: list) -> list[Utterance]:
    return [item for item in items if isinstance(item, Utterance)]


def test_segments_cover_the_text_in_order_and_respect_the_limit() -> None:
    text = STORY * 12
    items = split_script(text, SegmentPolicy(max_chars=150))
    segments = utterances(items)
    assert len(segments) > 5
    assert all(len(s.text) <= 150 for s in segments)
    assert all(text[s.start : s.end] == s.text for s in segments)
    assert all(a.end <= b.start for a, b in itertools.pairwise(segments))
    # Nothing but whitespace is left out.
    covered = "".join(text[s.start : s.end] for s in segments)
    assert covered.replace(" ", "") == text.replace(" ", "")


def test_segments_end_at_sentences_not_abbreviations() -> None:
    segments = utterances(split_script(STORY * 4, SegmentPolicy(max_chars=100)))
    for segment in segments:
        assert segment.text.endswith((".", '!"')), segment.text
        assert not segment.text.endswith(("Dr.", "D.C.", "Mr.", "J.", "R.", "e.g.")), segment.text
    # several short sentences share a segment
    assert any(segment.text.count(". ") >= 1 for segment in segments)


def test_a_sentence_longer_than_a_segment_is_cut_at_a_clause_then_between_words() -> None:
    long_sentence = "We walked along the river, past the mill and the old bridge, " + "and on " * 40 + "home."
    segments = utterances(split_script(long_sentence, SegmentPolicy(max_chars=60)))
    assert segments[0].text == "We walked along the river, past the mill and the old bridge,"
    assert all(len(s.text) <= 60 for s in segments)
    assert all(not s.text.startswith(("nd ", "n ")) for s in segments)  # never inside a word
    assert segments[-1].text.endswith("home.")


def test_break_tags_become_pauses_between_segments() -> None:
    text = 'First part. <break time="700ms"/> Second part.<BREAK time=\'1.5s\' /> Third. <break/>'
    items = split_script(text)
    assert [type(i).__name__ for i in items] == ["Utterance", "Pause", "Utterance", "Pause", "Utterance", "Pause"]
    assert [i.ms for i in items if isinstance(i, Pause)] == [700, 1500, 500]
    assert [i.text for i in utterances(items)] == ["First part.", "Second part.", "Third."]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('Hi <break time="soon"/> there.', "unreadable break tag"),
        ('Hi <break time="20s"/> there.', "over the 10000 ms limit"),
        # hundreds of digits: an infinite float, which round() cannot take
        ('Hi <break time="' + "9" * 320 + 'ms"/> there.', "over the 10000 ms limit"),
        ('Hi <break time="' + "9" * 308 + 's"/> there.', "over the 10000 ms limit"),
        ("Hi <break strength='x'/>.", "unreadable break tag"),
        # a tag the text never closes would be read aloud ("break time equals ...")
        ('Hi <break time="1s" there', "unclosed break tag"),
        ('Hi there <break time="1s"/', "unclosed break tag"),
        ("Hi <break", "unclosed break tag"),
        ('Hi <break time="1s" if a < b', "unclosed break tag"),
    ],
)
def test_malformed_break_tags_are_errors(text: str, message: str) -> None:
    with pytest.raises(BreakTagError, match=message):
        split_script(text)


def test_break_helpers() -> None:
    tag = find_break('a <break time="2s"/> b')
    assert tag is not None and (tag.start, tag.end, tag.ms) == (2, 20, 2000)
    assert find_break("a < b and c > d") is None
    assert pending_tag_start("Hello <bre") == 6
    assert pending_tag_start('Hello <break time="5') == 6
    assert pending_tag_start("if a < b") is None and pending_tag_start("if a <b") == 5
    assert pending_tag_start('Hi <break time="1s" if a < b') == 3  # not only at the very end
    assert pending_tag_start('Hi <break time="1s"/> if a < b') is None
    assert find_break("if a < b, x<y", complete=True) is None


@pytest.mark.parametrize("text", ["if a < b, then x<y.", "x<y", "a <", "<b> and <br> stay words."])
def test_a_lone_angle_bracket_is_text_in_complete_and_streamed_text(text: str) -> None:
    assert [i.text for i in utterances(split_script(text))] == [text.strip()]
    feed = TextFeed()
    feed.push(text)
    feed.close()
    assert feed.next_item() == Utterance(0, len(text), text)


def test_a_tag_longer_than_the_lookahead_is_read_whole() -> None:
    """A tag that starts inside a segment but closes past the text looked at was cut between its words
    and read aloud ("... <break"); it is read whole (here: refused)."""
    text = "word " * 50 + '<break time="' + "9" * 320 + 'ms"/> there.'
    with pytest.raises(BreakTagError, match="over the 10000 ms limit"):
        split_script(text)


def test_streamed_text_is_released_at_certain_boundaries() -> None:
    feed = TextFeed(SegmentPolicy(max_chars=200, min_clause_chars=30))
    released: list[tuple[str, str | None]] = []
    for piece in ["Hello", " there", "! How", " are you", " doing today, my dear friend, in this fine", " weather? I"]:
        feed.push(piece)
        item = feed.next_item()
        released.append((piece, item.text if item else None))
    assert released == [
        ("Hello", None),
        (" there", None),  # "there" may still grow
        ("! How", "Hello there!"),  # the next sentence has started: the first one is certain
        (" are you", None),
        (" doing today, my dear friend, in this fine", "How are you doing today, my dear friend,"),
        (" weather? I", "in this fine weather?"),
    ]
    feed.push(" am fine")
    assert feed.next_item() is None
    feed.flush()
    assert feed.next_item() == Utterance(76, 85, "I am fine")
    assert feed.next_item() is None and not feed.exhausted
    feed.close()
    assert feed.exhausted


MARKDOWN_REPLY = (
    "Here is your order.\n\n## Next steps\n1. Check the tracking page\n2. Call us if it is late\n"
    "10. Enjoy!\n\nYou can:\n- reset your password\n- contact support\n\nAnything else? Two-day - fast."
)


@pytest.mark.parametrize("piece_chars", [0, 1, 3, 7])  # 0: the whole text at once
def test_markdown_blocks_start_segments_and_keep_their_markers(piece_chars: int) -> None:
    """A list item's number or bullet begins its own line's segment: the sentence splitter took
    "\n2." for the end of the line before, and a bullet's dash for a clause's end, so both were
    spoken at the end of the wrong segment."""
    from serve_app.text.normalize import normalize_text

    policy = SegmentPolicy(max_chars=40)
    if piece_chars:
        feed, items = TextFeed(policy), []
        for i in range(0, len(MARKDOWN_REPLY), piece_chars):
            feed.push(MARKDOWN_REPLY[i : i + piece_chars])
            while (item := feed.next_item()) is not None:
                items.append(item)
        feed.close()
        while (item := feed.next_item()) is not None:
            items.append(item)
    else:
        items = split_script(MARKDOWN_REPLY, policy)
    texts = [item.text for item in items if isinstance(item, Utterance)]
    assert not any(t.rstrip().endswith(("1.", "2.", "10.", "-")) for t in texts), texts
    spoken = " ".join(normalize_text(t) for t in texts)
    assert spoken == (
        "Here is your order. Next steps. Check the tracking page. Call us if it is late. Enjoy! "
        "You can: reset your password. contact support. Anything else? Two-day - fast."
    )


@pytest.mark.parametrize("line", ["-5 degrees", "1.5 times", "#1 priority", "+1 555 0100", "**bold** words"])
def test_a_line_that_only_starts_like_a_markdown_block_does_not_end_the_line_before(line: str) -> None:
    """Streamed, "\n-", "\n1." or "\n#" looked like a list item or heading before the rest of the
    line came, and the sentence was cut at the newline; the whole text is not cut there."""
    text = f"It said\n{line} for us. Done."
    feed, texts = TextFeed(), []
    for char in text:
        feed.push(char)
        while (item := feed.next_item()) is not None:
            texts.append(item.text)
    feed.close()
    while (item := feed.next_item()) is not None:
        texts.append(item.text)
    assert texts == [f"It said\n{line} for us.", "Done."]


def test_a_sentence_end_followed_by_a_space_is_certain_but_an_abbreviation_is_not() -> None:
    feed = TextFeed()
    feed.push("Thanks for waiting. ")
    assert feed.next_item() == Utterance(0, 19, "Thanks for waiting.")
    feed.push("Ask Dr. ")
    assert feed.next_item() is None  # "Dr." does not end a sentence
    feed.push("Smith. ")
    assert feed.next_item() == Utterance(20, 34, "Ask Dr. Smith.")


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("The store opens at 9 a.m. tomorrow. Come early. ", "The store opens at 9 a.m. tomorrow."),
        ("Wait... what? That is odd. ", "Wait... what?"),
        ('"Are you sure?" she asked. Then she left. ', '"Are you sure?" she asked.'),
        ("Your room is No. 5 on the left. Enjoy. ", "Your room is No. 5 on the left."),
    ],
)
def test_an_end_a_lower_case_word_or_a_number_may_go_on_from_waits_for_it(text: str, first: str) -> None:
    """Words sent with their trailing space, as many clients send them: the space does not make
    "a.m.", "..." or "No." end a sentence, as the next word may go on with it (the whole text is
    not cut there either)."""
    feed, texts = TextFeed(), []
    for word in text.split(" ")[:-1]:
        feed.push(word + " ")
        while (item := feed.next_item()) is not None:
            texts.append(item.text)
    assert texts[0] == first
    assert utterances(split_script(text, SegmentPolicy(max_chars=max(20, len(first)))))[0].text == first


def test_a_break_tag_split_across_pieces_waits_for_its_end() -> None:
    feed = TextFeed()
    feed.push("Wait for it <bre")
    feed.flush()
    assert feed.next_item() == Utterance(0, 11, "Wait for it")
    assert feed.next_item() is None  # the tag is not complete yet
    assert feed.flushed  # ... and the flush is answered: the rest of the tag may come after it
    feed.push('ak time="300ms"/> now.')
    assert feed.next_item() == Pause(12, 33, 300)
    feed.close()
    assert feed.next_item() == Utterance(34, 38, "now.")


def test_an_unclosed_break_tag_waits_while_the_feed_is_open() -> None:
    feed = TextFeed()
    feed.push('Hi <break time="1s"')
    assert feed.next_item() is None
    feed.flush()
    assert feed.next_item() == Utterance(0, 2, "Hi")
    assert feed.next_item() is None and feed.flushed  # the tag's ">" may still come
    feed.push(" />")
    assert feed.next_item() == Pause(3, 22, 1000)
    feed.push(" there.")
    feed.close()
    assert feed.next_item() == Utterance(23, 29, "there.")


def test_an_unclosed_break_tag_is_an_error_once_the_feed_closes() -> None:
    feed = TextFeed()
    feed.push('Hi <break time="1s" there, if a < b')
    feed.flush()
    assert feed.next_item() == Utterance(0, 2, "Hi")
    assert feed.next_item() is None  # never spoken: a later "<" does not hide the open tag
    feed.close()
    with pytest.raises(BreakTagError, match="unclosed break tag"):
        feed.next_item()


def test_long_streamed_text_without_any_boundary_is_cut_between_words() -> None:
    feed = TextFeed(SegmentPolicy(max_chars=40))
    feed.push("word " * 30)
    item = feed.next_item()
    assert item is not None and len(item.text) <= 40 and item.text.endswith("word")


def test_chinese_japanese_and_arabic_sentence_ends_end_sentences() -> None:
    """The sentence splitter knows only ASCII punctuation: streamed Chinese was spoken only at its close
    (or after 280 characters), and a long text was cut in the middle of a sentence."""
    feed = TextFeed()
    feed.push("你好！我")
    assert feed.next_item() == Utterance(0, 3, "你好！")
    feed.push("可以帮你什么？")
    assert feed.next_item() is None  # a closing quote may still follow
    feed.push("今天")
    assert feed.next_item() == Utterance(3, 11, "我可以帮你什么？")
    feed = TextFeed()
    feed.push("هل يمكنني مساعدتك؟ نعم")
    assert feed.next_item() == Utterance(0, 18, "هل يمكنني مساعدتك؟")
    segments = utterances(split_script("こんにちは。元気ですか？" * 30))
    assert len(segments) == 2 and all(s.text.endswith("？") and len(s.text) <= 280 for s in segments)


def test_lexicon_replaces_whole_words_once_case_sensitively() -> None:
    lexicon = Lexicon({"SQL": "sequel", "Nguyen": "Win", "New York City": "the Big Apple", "sequel": "X"})
    assert lexicon.apply("SQL and MySQL; sql. Nguyen's New York City") == (
        "sequel and MySQL; sql. Win's the Big Apple"
    )
    assert lexicon.merged({"SQL": "S Q L"}).apply("SQL") == "S Q L"
    assert Lexicon().apply("SQL") == "SQL"


@pytest.mark.parametrize(
    "entries",
    [
        {"": "x"},
        {"a" * 101: "x"},
        {"w": "x" * 401},
        # a lone surrogate (JSON's "\ud800") cannot be encoded into the model's prompt
        {"Hi": "\ud800"},
        {"Hi": "say \udfff"},
        {"\ud800": "x"},
    ],
)
def test_lexicon_rejects_unusable_entries(entries: dict[str, str]) -> None:
    with pytest.raises(LexiconError):
        Lexicon(entries)
    with pytest.raises(LexiconError):
        Lexicon({"SQL": "sequel"}).merged(entries)  # a request's entries over the server's
