"""Make docs/playground.png: the playground after a few real runs against the tiny random model.

    PYTHONPATH=. python3 docs/playground_screenshot.py [--out docs/playground.png]

Starts `csm-serve serve --preset tiny-random` on a free port (voices in a temporary directory), then
drives Debian's chromium (Playwright, with a fake microphone playing a tone): records and saves a
voice, generates a conversation, speaks in the saved voice with streaming, seeks by clicking the
waveform, and screenshots the page.
The tiny model's audio is noise, and the page says so.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("CSM_CHROMIUM", "/usr/bin/chromium")
RUN_TIMEOUT_MS = 180_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _server(voices_dir: Path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "CSM_VOICES_DIR": str(voices_dir), "PYTHONPATH": os.getcwd()}
    command = [sys.executable, "-m", "serve_app.cli", "serve", "--preset", "tiny-random", "--port", str(port)]
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not become healthy")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _microphone(path: Path) -> Path:
    """A spoken-like test signal for the fake microphone: a gliding tone with a syllable rhythm."""
    rate = 48_000
    t = np.arange(3 * rate) / rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    signal = 0.3 * envelope * np.sin(2 * np.pi * np.cumsum(pitch) / rate)
    buf = io.BytesIO()
    sf.write(buf, signal.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    path.write_bytes(buf.getvalue())
    return path


def _wait_for_run(page, runs: int) -> None:
    page.wait_for_function(
        f"document.querySelectorAll('#runs-body tr').length >= {runs}", timeout=RUN_TIMEOUT_MS
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/playground.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, _server(Path(tmp) / "voices") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={_microphone(Path(tmp) / 'mic.wav')}",
            ],
        )
        page = browser.new_page(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
        page.goto(url + "/")
        # a voice, recorded from the (fake) microphone
        page.click("#record")
        page.wait_for_timeout(2500)
        page.click("#record")
        page.fill("#voice-name", "Narrator")
        page.fill("#voice-transcript", "This is how I sound when I read aloud.")
        page.click("#save-voice")
        page.wait_for_selector("#voice-list .voice")
        # a short conversation
        page.fill("#turns .turn:nth-child(1) .turn-text", "Did you hear the news?")
        page.fill("#turns .turn:nth-child(2) .turn-text", "No, tell me!")
        page.click("#generate-conversation")
        _wait_for_run(page, 1)
        # streamed speech in the saved voice, a little faster
        page.fill("#max-duration", "4000")
        page.fill("#seed", "7")
        page.fill("#speed", "1.15")
        page.fill("#text", "Hello! This is CSM, speaking to you from the playground.")
        page.click("#speak")
        _wait_for_run(page, 2)
        # seek by clicking the waveform, as a listener would, and hold still for the picture
        box = page.locator("#waveform").bounding_box()
        page.click("#waveform", position={"x": box["width"] * 0.42, "y": box["height"] / 2})
        page.evaluate("document.getElementById('player').pause()")
        page.wait_for_timeout(300)
        page.mouse.move(0, 0)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
