"""The playground page in headless Chromium against the app on loopback: type, speak, hear, download.

Needs Debian's chromium and Playwright's Python package (never `playwright install`):
    apt-get install -y chromium && pip install playwright
"""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from serve_app.engine.types import SAMPLE_RATE
from serve_app.web.routes import ASSETS
from tests.support_tools import ToneEngine, api_app, chromium, read_wav, serve_http, tone, wav_bytes


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    # Frames trickle out (40 ms each) so streamed playback starts before generation ends.
    with serve_http(api_app(ToneEngine(frame_delay_s=0.04), tmp_path_factory.mktemp("voices"))) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
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
    for name, media_type in ASSETS.items():
        r = httpx.get(f"{url}/playground/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == media_type and r.text
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


def _speak_and_check(page, url: str, tmp_path: Path, *, stream: bool, expect_seconds: float) -> float:
    """Speak, check playback and the download; returns where the element started playing (s)."""
    page.goto(url + "/playground")
    page.evaluate(PLAY_WATCH)
    page.fill("#text", "Hello from the playground, streaming speech.")
    page.select_option("#voice", "speaker:0")
    if not stream:
        page.uncheck("#stream")
    page.click("#speak")
    page.wait_for_function(PLAYED, timeout=20_000)
    duration = page.evaluate("document.getElementById('player').duration")
    assert duration == pytest.approx(expect_seconds, abs=0.01)
    assert "error" not in page.evaluate("window.__events")
    with page.expect_download() as download_info:
        page.click("#download")
    path = tmp_path / "download.wav"
    download_info.value.save_as(path)
    pcm, rate = read_wav(path.read_bytes())
    assert rate == SAMPLE_RATE and len(pcm) / rate == pytest.approx(expect_seconds, abs=1e-3)
    assert float(abs(pcm).max()) > 0.1  # the tone, not silence
    return page.evaluate("window.__startedAt")


# The tone engine makes 2 + len(text) // 4 frames of 80 ms: 45 characters -> 13 frames -> 1.04 s.
EXPECTED_SECONDS = 13 * 0.08


def test_streamed_speech_plays_in_the_audio_element_and_downloads(page, url: str, tmp_path: Path) -> None:
    started_at = _speak_and_check(page, url, tmp_path, stream=True, expect_seconds=EXPECTED_SECONDS)
    assert "s of audio in" in page.inner_text("#status")
    # Live (Web Audio) playback came first; the element took over where it had got to (13 frames arrive
    # 40 ms apart, so live playback had reached about 0.45 s).
    assert 0.15 < started_at < EXPECTED_SECONDS


def test_unstreamed_speech_plays_and_downloads(page, url: str, tmp_path: Path) -> None:
    assert _speak_and_check(page, url, tmp_path, stream=False, expect_seconds=EXPECTED_SECONDS) < 0.1
    assert page.inner_text("#status").startswith("done in")


def test_saved_voices_fill_the_select_and_context_upload_is_sent(page, url: str, tmp_path: Path) -> None:
    import base64

    voice = httpx.post(url + "/v1/voices", json={
        "name": "narrator", "audio_b64": base64.b64encode(wav_bytes(tone(0.3))).decode(), "transcript": "hi"})
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
        assert "API key" in page.inner_text("#status")
        page.click("#key-box summary")
        page.fill("#api-key", key)
        page.dispatch_event("#api-key", "change")
        with page.expect_request("**/speak") as request_info:
            page.click("#speak")
        assert request_info.value.headers["authorization"] == f"Bearer {key}"
        page.wait_for_function("document.getElementById('player').duration > 0", timeout=20_000)
        page.reload()  # the key stays for the tab's session
        assert page.input_value("#api-key") == key
        context.close()
