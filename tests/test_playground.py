"""The playground page in headless Chromium against the app on loopback: speak (live waveform, time to
first audio and real-time factor), speed, output formats, conversations, and voices recorded from a
fake microphone.

Needs Debian's chromium and Playwright's Python package (never `playwright install`):
    apt-get install -y chromium && pip install playwright
"""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from serve_app.api.schemas import PREVIEW_TEXT
from serve_app.engine.types import SAMPLE_RATE
from serve_app.text.normalize import normalize_text
from serve_app.web.routes import ASSETS
from tests.support_tools import ToneEngine, api_app, chromium, read_wav, serve_http, tone, wav_bytes

MICROPHONE_SECONDS = 1.5


@pytest.fixture(scope="module")
def engine() -> ToneEngine:
    # Frames trickle out (40 ms each) so streamed playback starts before generation ends.
    return ToneEngine(frame_delay_s=0.04)


@pytest.fixture(scope="module")
def url(tmp_path_factory, engine) -> str:
    with serve_http(api_app(engine, tmp_path_factory.mktemp("voices"))) as base:
        yield base


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    # The fake microphone plays this tone (looped), so recordings hold a known, audible signal.
    microphone = tmp_path_factory.mktemp("mic") / "microphone.wav"
    microphone.write_bytes(wav_bytes(tone(2.0, 330.0)))
    fake_media = (
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
    )
    with chromium(fake_media) as browser:
        yield browser


@pytest.fixture()
def page(browser, url):
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def test_page_and_assets_are_served(url: str) -> None:
    for path in ("/", "/playground"):
        r = httpx.get(url + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert 'id="speak"' in r.text and "playground/playground.js" in r.text
        assert "http://" not in r.text and "https://" not in r.text  # nothing from outside
    for name, media_type in ASSETS.items():
        r = httpx.get(f"{url}/playground/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == media_type and r.text
        assert not re.search(r"""(import|from)\s*["']https?:""", r.text)
    assert httpx.get(url + "/playground/secrets.txt").status_code == 404


PLAY_WATCH = """() => {
  const a = document.getElementById('player');
  window.__events = [];
  for (const e of ['playing', 'ended', 'error']) a.addEventListener(e, () => window.__events.push(e));
  a.addEventListener('playing', () => { window.__startedAt = a.currentTime; }, { once: true });
}"""

PLAYED = """() => {
  const a = document.getElementById('player');
  return Boolean(a.currentSrc) && a.duration > 0 && window.__events.includes('playing')
    && (!a.paused || a.ended);
}"""

# Drawn waveform pixels (not transparent), off the axis row.
DRAWN_PIXELS = """() => {
  const c = document.getElementById('waveform');
  const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const axis = Math.floor(c.height / 2);
  let n = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0 && Math.floor((i >> 2) / c.width) !== axis) n++;
  return n;
}"""


def _frames(text: str) -> int:
    """The tone engine's length for a text: 2 + len // 4 frames of 80 ms."""
    return 2 + len(normalize_text(text)) // 4


def _wait_played(page, seconds: float) -> None:
    page.wait_for_function(PLAYED, timeout=20_000)
    assert page.evaluate("document.getElementById('player').duration") == pytest.approx(seconds, abs=0.01)
    assert "error" not in page.evaluate("window.__events")


def _download(page, tmp_path: Path) -> tuple[np.ndarray, int]:
    with page.expect_download() as download_info:
        page.click("#download")
    path = tmp_path / "download.wav"
    download_info.value.save_as(path)
    return read_wav(path.read_bytes())


def _last_run(page) -> dict:
    return page.evaluate("""() => {
      const row = document.querySelector('#runs-body tr');
      const cells = [...row.children].map((c) => c.textContent);
      const stat = (id) => document.getElementById(id).textContent;
      return { cells, ttfaMs: Number(row.dataset.ttfaMs), rtf: Number(row.dataset.rtf),
               stats: { ttfa: stat('stat-ttfa'), audio: stat('stat-audio'), total: stat('stat-total'), rtf: stat('stat-rtf') } };
    }""")


def _seconds_of(text: str) -> float:
    """'523 ms' or '1.20 s' -> seconds."""
    value, unit = text.split()
    return float(value) / (1000 if unit == "ms" else 1)


STREAM_TEXT = "Hello from the playground, streaming speech."  # 45 characters: 13 frames, 1.04 s


def test_streamed_speech_draws_live_plays_and_reports_its_timing(page, url: str, tmp_path: Path) -> None:
    page.goto(url + "/playground")
    page.evaluate(PLAY_WATCH)
    page.fill("#text", STREAM_TEXT)
    page.select_option("#voice", "speaker:0")
    page.click("#speak")
    # While the stream is still coming in, the waveform already shows what has arrived.
    page.wait_for_function(
        "() => Number(document.getElementById('waveform').dataset.samples) > 0"
        " && document.getElementById('status').textContent.includes('streaming')",
        timeout=20_000, polling=10,
    )
    early_samples = int(page.get_attribute("#waveform", "data-samples"))
    page.wait_for_timeout(50)  # a frame for the drawing
    assert page.evaluate(DRAWN_PIXELS) > 50
    expected = _frames(STREAM_TEXT) * 0.08
    _wait_played(page, expected)
    total_samples = int(page.get_attribute("#waveform", "data-samples"))
    assert total_samples == round(expected * SAMPLE_RATE) and early_samples < total_samples
    assert "s of audio in" in page.inner_text("#status")
    # Live (Web Audio) playback came first; the element took over where it had got to (13 frames
    # arrive 40 ms apart, so live playback had reached about 0.45 s).
    assert 0.15 < page.evaluate("window.__startedAt") < expected
    run = _last_run(page)
    assert run["cells"][1:3] == ["speak (streamed)", "Speaker 0"]
    total = _seconds_of(run["stats"]["total"])
    assert run["stats"]["audio"] == f"{expected:.2f} s"
    # First audio arrives with the first frame, long before the end of the stream.
    assert 0 < run["ttfaMs"] / 1000 < 0.6 * total
    assert run["stats"]["ttfa"] == f"{run['ttfaMs']} ms"
    assert run["rtf"] == pytest.approx(total / expected, rel=0.02)
    assert run["stats"]["rtf"] == f"{run['rtf']:.2f}" == run["cells"][5]
    pcm, rate = _download(page, tmp_path)
    assert rate == SAMPLE_RATE and len(pcm) / rate == pytest.approx(expected, abs=1e-3)
    assert float(abs(pcm).max()) > 0.1  # the tone, not silence


def test_unstreamed_speech_plays_and_downloads(page, url: str, tmp_path: Path) -> None:
    page.goto(url + "/")
    page.evaluate(PLAY_WATCH)
    page.fill("#text", STREAM_TEXT)
    page.uncheck("#stream")
    page.click("#speak")
    expected = _frames(STREAM_TEXT) * 0.08
    _wait_played(page, expected)
    assert page.evaluate("window.__startedAt") < 0.1
    run = _last_run(page)
    assert run["cells"][1] == "speak"
    # Whole-file answers: the first audio is the whole file.
    assert run["ttfaMs"] / 1000 == pytest.approx(_seconds_of(run["stats"]["total"]), abs=0.05)
    pcm, rate = _download(page, tmp_path)
    assert len(pcm) == round(expected * rate)
    # Clicking the waveform seeks: the view spans 3 s (short audio fills part of it).
    page.evaluate("document.getElementById('player').pause()")
    box = page.locator("#waveform").bounding_box()
    page.click("#waveform", position={"x": box["width"] * 0.5 / 3, "y": box["height"] / 2})
    assert page.evaluate("document.getElementById('player').currentTime") == pytest.approx(0.5, abs=0.02)


def test_speed_control_changes_the_speech_rate(page, url: str, engine: ToneEngine) -> None:
    page.goto(url + "/")
    page.evaluate(PLAY_WATCH)
    page.fill("#text", STREAM_TEXT)
    page.uncheck("#stream")
    page.fill("#speed", "2")  # a range input: sets the value and fires input
    assert page.inner_text("#speed-value") == "2.00×"
    with page.expect_request("**/speak") as request_info:
        page.click("#speak")
    assert request_info.value.post_data_json["speed"] == 2
    page.wait_for_function(PLAYED, timeout=20_000)
    natural = _frames(STREAM_TEXT) * 0.08
    assert page.evaluate("document.getElementById('player').duration") == pytest.approx(natural / 2, abs=0.03)


# What the page's download holds: its object URL's type, and its bytes as PyAV reads them.
DOWNLOAD_TYPE = "() => fetch(document.getElementById('download').href).then((r) => r.blob()).then((b) => b.type)"


def _download_file(page) -> tuple[str, bytes]:
    with page.expect_download() as download_info:
        page.click("#download")
    download = download_info.value
    return download.suggested_filename, Path(download.path()).read_bytes()


def _decoded(data: bytes) -> tuple[str, str, float]:
    """(container, decoder, seconds) of an audio file, as FFmpeg reads it."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return container.format.name, stream.codec_context.name, samples / stream.rate


# `slack`: how far the decoded length may be off. ADTS (aac) holds no length: decoders give 1024 samples
# of priming and whole 1024-sample frames (the last one padded).
@pytest.mark.parametrize(("fmt", "container", "media_type", "slack"), [
    ("mp3", "mp3", "audio/mpeg", 0.02), ("opus", "ogg", "audio/ogg", 0.02), ("flac", "flac", "audio/flac", 0.02),
    ("aac", "aac", "audio/aac", 0.1),
])
def test_unstreamed_speech_in_a_chosen_format_plays_draws_and_downloads(
    page, url: str, fmt: str, container: str, media_type: str, slack: float
) -> None:
    page.goto(url + "/")
    page.evaluate(PLAY_WATCH)
    page.fill("#text", STREAM_TEXT)
    assert page.is_disabled("#format")  # streaming by default: streamed speech is WAV
    page.uncheck("#stream")
    assert page.is_enabled("#format") and page.get_attribute("#format", "title") == ""
    page.select_option("#format", fmt)
    with page.expect_request("**/speak") as request_info:
        page.click("#speak")
    sent = request_info.value.post_data_json
    assert sent["response_format"] == fmt and sent["stream"] is False
    expected = _frames(STREAM_TEXT) * 0.08
    page.wait_for_function(PLAYED, timeout=20_000)
    assert page.evaluate("document.getElementById('player').currentSrc").startswith("blob:")
    assert page.evaluate("document.getElementById('player').duration") == pytest.approx(expected, abs=slack)
    assert "error" not in page.evaluate("window.__events")
    # the browser decoded the file to draw it: a waveform of its length (at the decoder's rate)
    assert float(page.get_attribute("#waveform", "data-seconds")) == pytest.approx(expected, abs=slack)
    page.wait_for_timeout(50)  # a frame for the drawing
    assert page.evaluate(DRAWN_PIXELS) > 50
    run = _last_run(page)
    assert run["cells"][1] == "speak" and _seconds_of(run["stats"]["audio"]) == pytest.approx(expected, abs=slack)
    assert "s of audio in" in page.inner_text("#status")
    assert page.inner_text("#download") == f"Download {fmt.upper()}"
    assert page.evaluate(DOWNLOAD_TYPE) == media_type
    filename, data = _download_file(page)
    assert filename == f"speech.{fmt}"
    found, decoder, seconds = _decoded(data)
    assert found == container and decoder.startswith(fmt)  # FFmpeg's mp3 decoder is "mp3float"
    assert seconds == pytest.approx(expected, abs=slack)


def test_a_file_the_browser_cannot_decode_still_plays_without_a_waveform(page, url: str) -> None:
    page.add_init_script("AudioContext.prototype.decodeAudioData = () => Promise.reject(new DOMException('no', 'EncodingError'))")
    page.goto(url + "/")
    page.evaluate(PLAY_WATCH)
    page.fill("#text", STREAM_TEXT)
    page.uncheck("#stream")
    page.select_option("#format", "flac")
    page.click("#speak")
    page.wait_for_function(PLAYED, timeout=20_000)
    assert page.get_attribute("#waveform", "data-samples") == "0"
    assert page.inner_text("#status").startswith("done in") and not page.is_visible("#status.error")
    run = _last_run(page)
    assert run["stats"]["audio"] == run["stats"]["rtf"] == "–"
    assert page.get_attribute("#download", "download") == "speech.flac"


def test_streamed_speech_stays_wav_and_says_the_format_is_for_unstreamed_output(page, url: str) -> None:
    page.goto(url + "/")
    page.evaluate(PLAY_WATCH)
    page.uncheck("#stream")
    page.select_option("#format", "mp3")
    page.check("#stream")
    assert page.is_disabled("#format")
    assert page.input_value("#format") == "mp3"  # kept for unstreamed speech and conversations
    for hint in (page.get_attribute("#format", "title"), page.get_attribute("#format-label", "title")):
        assert "Streamed speech is WAV" in hint and "Stream off" in hint
    page.fill("#text", STREAM_TEXT)
    with page.expect_request("**/speak") as request_info:
        page.click("#speak")
    sent = request_info.value.post_data_json
    assert sent["response_format"] == "wav" and sent["stream"] is True
    _wait_played(page, _frames(STREAM_TEXT) * 0.08)
    assert page.get_attribute("#download", "download") == "speech.wav"
    assert page.inner_text("#download") == "Download WAV"
    assert page.evaluate(DOWNLOAD_TYPE) == "audio/wav"
    page.uncheck("#stream")
    assert page.is_enabled("#format") and page.get_attribute("#format", "title") == ""


def test_conversations_use_the_chosen_format_and_previews_stay_wav(page, url: str) -> None:
    voice_id = httpx.post(url + "/v1/voices", json={
        "name": "previewed", "audio_b64": base64.b64encode(wav_bytes(tone(1.0))).decode(), "transcript": "hi",
    }).json()["id"]
    try:
        page.goto(url + "/")
        page.evaluate(PLAY_WATCH)
        page.uncheck("#stream")
        page.select_option("#format", "opus")
        page.check("#stream")  # streaming is for speech: a conversation is one file either way
        with page.expect_request("**/conversation") as request_info:
            page.click("#generate-conversation")
        assert request_info.value.post_data_json["response_format"] == "opus"
        page.wait_for_function(PLAYED, timeout=20_000)
        assert _last_run(page)["cells"][1] == "conversation (2 turns)"
        assert page.evaluate(DOWNLOAD_TYPE) == "audio/ogg"
        filename, data = _download_file(page)
        assert filename == "conversation.opus" and _decoded(data)[:2] == ("ogg", "opus")

        page.evaluate(PLAY_WATCH)
        item = page.locator(f"#voice-list .voice[data-id='{voice_id}']")
        with page.expect_request(f"**/v1/voices/{voice_id}/preview") as request_info:
            item.locator(".voice-preview").click()
        assert request_info.value.post_data_json["response_format"] == "wav"
        _wait_played(page, _frames(PREVIEW_TEXT) * 0.08)
        assert page.get_attribute("#download", "download") == "preview.wav"
    finally:
        assert httpx.delete(f"{url}/v1/voices/{voice_id}").status_code == 204


def test_conversation_builder_sends_its_turns_and_plays_one_file(page, url: str) -> None:
    page.goto(url + "/")
    page.evaluate(PLAY_WATCH)
    assert page.locator("#turns .turn").count() == 2  # a starter dialogue
    page.click("#add-turn")
    page.click("#add-turn")
    turns = page.locator("#turns .turn")
    assert turns.count() == 4
    assert turns.nth(2).locator(".turn-speaker").input_value() == "0"  # speakers alternate
    turns.nth(3).locator(".turn-remove").click()
    texts = ["Did you hear the news?", "No, tell me!", "The playground can talk."]
    for i, text in enumerate(texts):
        turns.nth(i).locator(".turn-text").fill(text)
    turns.nth(1).locator(".turn-pause").fill("200")
    with page.expect_request("**/conversation") as request_info:
        page.click("#generate-conversation")
    sent = request_info.value.post_data_json
    assert [(t["speaker"], t["text"], t["pause_ms"]) for t in sent["turns"]] == [
        (0, texts[0], 400), (1, texts[1], 200), (0, texts[2], 400)
    ]
    # speech of each turn, plus the pauses between turns (not after the last)
    expected = sum(_frames(t) for t in texts) * 0.08 + 0.4 + 0.2
    _wait_played(page, expected)
    assert _last_run(page)["cells"][1] == "conversation (3 turns)"
    assert int(page.get_attribute("#waveform", "data-samples")) == round(expected * SAMPLE_RATE)
    assert page.get_attribute("#download", "download") == "conversation.wav"
    # an empty turn is caught before any request
    turns.nth(0).locator(".turn-text").fill("  ")
    page.click("#generate-conversation")
    assert page.inner_text("#status") == "turn 1 has no text"


def test_voice_recorded_from_the_microphone_is_saved_used_previewed_and_deleted(page, url: str) -> None:
    page.goto(url + "/")
    page.evaluate(PLAY_WATCH)
    page.wait_for_selector("#no-voices", state="visible")
    page.click("#record")
    page.wait_for_function("document.getElementById('record').getAttribute('aria-pressed') === 'true'")
    page.wait_for_timeout(MICROPHONE_SECONDS * 1000)
    page.click("#record")
    page.wait_for_selector("#recording", state="visible")
    page.fill("#voice-name", "Mic voice")
    page.fill("#voice-transcript", "A tone from the fake microphone.")
    page.select_option("#voice-speaker", "1")
    with page.expect_request("**/v1/voices") as request_info:
        page.click("#save-voice")
    upload = request_info.value
    assert upload.headers["content-type"].startswith("multipart/form-data")
    page.wait_for_selector("#voice-list .voice")
    assert "saved" in page.inner_text("#voice-status")
    [voice] = httpx.get(url + "/v1/voices").json()["data"]
    assert (voice["name"], voice["speaker"]) == ("Mic voice", 1)
    # the recording reached the server as real audio of about its length
    assert voice["duration_ms"] / 1000 == pytest.approx(MICROPHONE_SECONDS, abs=0.5)
    # a new voice is selected for speaking at once, and listed
    assert page.input_value("#voice") == f"voice:{voice['id']}"
    item = page.locator(f"#voice-list .voice[data-id='{voice['id']}']")
    assert "Mic voice" in item.inner_text()

    page.select_option("#voice", "speaker:0")
    item.locator(".voice-use").click()
    assert page.input_value("#voice") == f"voice:{voice['id']}"
    page.fill("#text", "Speaking in the saved voice.")
    page.uncheck("#stream")
    with page.expect_request("**/speak") as request_info:
        page.click("#speak")
    assert request_info.value.post_data_json["voice"] == voice["id"]
    page.wait_for_function(PLAYED, timeout=20_000)

    page.evaluate(PLAY_WATCH)
    with page.expect_request(f"**/v1/voices/{voice['id']}/preview") as request_info:
        item.locator(".voice-preview").click()
    _wait_played(page, _frames(PREVIEW_TEXT) * 0.08)
    assert _last_run(page)["cells"][1:3] == ["preview", "Mic voice"]

    assert item.locator(".voice-delete").get_attribute("aria-label") == "Delete voice Mic voice"  # which one
    page.once("dialog", lambda dialog: dialog.dismiss())  # asked first: a dismissed question deletes nothing
    item.locator(".voice-delete").click()
    assert len(httpx.get(url + "/v1/voices").json()["data"]) == 1
    page.select_option("#voice", f"voice:{voice['id']}")
    page.once("dialog", lambda dialog: dialog.accept())
    item.locator(".voice-delete").click()
    page.wait_for_selector("#no-voices", state="visible")
    assert page.input_value("#voice") == "speaker:1"  # the selected voice went: back to the default, said
    assert "no longer exists" in page.inner_text("#status")
    assert httpx.get(url + "/v1/voices").json()["data"] == []
    assert page.locator(f"#voice option[value='voice:{voice['id']}']").count() == 0


def test_a_silent_upload_shows_the_servers_reason(page, url: str, tmp_path: Path) -> None:
    silent = tmp_path / "silent.wav"
    silent.write_bytes(wav_bytes(np.zeros(SAMPLE_RATE, np.float32)))
    page.goto(url + "/")
    page.set_input_files("#voice-file", str(silent))
    page.fill("#voice-name", "Nobody")
    page.fill("#voice-transcript", "Nothing at all.")
    page.click("#save-voice")
    page.wait_for_selector("#voice-status.error")
    assert page.inner_text("#voice-status").startswith("audio is silent")
    assert httpx.get(url + "/v1/voices").json()["data"] == []


def test_saved_voices_fill_the_select_and_context_upload_is_sent(page, url: str, tmp_path: Path) -> None:
    voice = httpx.post(url + "/v1/voices", json={
        "name": "narrator", "audio_b64": base64.b64encode(wav_bytes(tone(1.0))).decode(), "transcript": "hi"})
    voice_id = voice.json()["id"]
    reference = tmp_path / "context.wav"
    reference.write_bytes(wav_bytes(tone(0.3)))
    page.goto(url + "/")
    page.wait_for_selector(f"#voice option[value='voice:{voice_id}']", state="attached")
    page.select_option("#voice", f"voice:{voice_id}")
    page.click("#context-box summary")
    page.set_input_files("#context-file", str(reference))
    page.fill("#context-text", "What the recording says.")
    page.fill("#text", "With a saved voice and context.")
    with page.expect_request("**/speak") as request_info:
        page.click("#speak")
    sent = request_info.value.post_data_json
    assert sent["voice"] == voice_id and "speaker" not in sent
    assert sent["context"][0]["text"] == "What the recording says."
    assert base64.b64decode(sent["context"][0]["audio_b64"]) == reference.read_bytes()
    page.wait_for_function("document.getElementById('player').duration > 0", timeout=20_000)
    assert httpx.delete(f"{url}/v1/voices/{voice_id}").status_code == 204


def test_built_in_voices_are_offered_and_a_round_duration_submits(page, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_selector("#builtin-voices option[value='voice:nova']", state="attached")
    assert page.locator("#builtin-voices option[value='voice:0']").count() == 0  # the speakers are above
    page.select_option("#voice", "voice:nova")
    page.fill("#max-duration", "1000")  # not a multiple of a frame: the server rounds it
    page.uncheck("#stream")
    page.fill("#text", "In a built-in voice.")
    with page.expect_request("**/speak") as request_info:
        page.click("#speak")
    sent = request_info.value.post_data_json
    assert sent["voice"] == "nova" and sent["max_duration_ms"] == 1000
    page.wait_for_function("document.getElementById('player').duration > 0", timeout=20_000)


def test_the_page_fits_a_phone_and_names_its_controls(browser, url: str) -> None:
    """At 375 px the conversation's turns stay readable and nothing scrolls sideways; typed values
    are not drawn in the placeholder grey; the speed slider and the format select have names for screen
    readers."""
    context = browser.new_context(viewport={"width": 375, "height": 800})
    page = context.new_page()
    page.goto(url + "/")
    width = page.evaluate("document.querySelector('#turns .turn-text').getBoundingClientRect().width")
    assert width > 250
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    colors = page.evaluate("""() => ['max-duration', 'text'].map(
        (id) => getComputedStyle(document.getElementById(id)).color)""")
    assert colors[0] == colors[1]  # a typed Max ms looks like typed text, not like a hint
    assert page.get_by_role("slider", name="Speed").count() == 1
    assert page.get_by_role("combobox", name="Format").count() == 1
    context.close()


def test_ctrl_enter_in_the_text_speaks(page, url: str) -> None:
    page.goto(url + "/")
    page.fill("#text", "Spoken from the keyboard.")
    with page.expect_request("**/speak") as request_info:
        page.press("#text", "Control+Enter")
    assert request_info.value.post_data_json["text"] == "Spoken from the keyboard."


def test_server_errors_are_shown_to_the_user(page, url: str) -> None:
    page.goto(url + "/playground")
    page.fill("#text", "x" * 1000)
    page.click("#speak")
    page.wait_for_selector("#status.error")
    assert "limit" in page.inner_text("#status")
    page.fill("#text", "please overload")
    page.click("#speak")
    page.wait_for_function("document.getElementById('status').textContent.includes('retry after 1')")


def test_a_server_with_api_keys_is_usable_once_the_key_is_entered(browser, tmp_path: Path) -> None:
    key = "playground-key-0123456789"
    app = api_app(ToneEngine(), tmp_path / "voices", api_keys=key)
    with serve_http(app) as keyed_url:
        context = browser.new_context()
        page = context.new_page()
        page.goto(keyed_url + "/")
        page.fill("#text", "Hello with a key.")
        page.click("#speak")
        page.wait_for_selector("#status.error")
        assert "needs an API key: enter it above" in page.inner_text("#status")
        assert page.is_hidden("#no-voices")  # the list could not be read: not "no saved voices"
        assert "couldn't load saved voices" in page.inner_text("#voice-status")
        # The page opens its key field and puts the cursor there, rather than naming an HTTP header.
        assert page.evaluate("document.getElementById('key-box').open")
        assert page.evaluate("document.activeElement.id") == "api-key"
        page.fill("#api-key", key)
        page.dispatch_event("#api-key", "change")
        with page.expect_request("**/speak") as request_info:
            page.click("#speak")
        assert request_info.value.headers["authorization"] == f"Bearer {key}"
        page.wait_for_function("document.getElementById('player').duration > 0", timeout=20_000)
        page.reload()  # the key stays for the tab's session
        assert page.input_value("#api-key") == key
        context.close()
