"""End to end with the real tiny engine: `csm-serve serve --preset tiny-random` in a subprocess, then the
client, the CLI, `/metrics`, the JSON access log and the playground (headless Chromium) against it.

Utterances are kept to a few frames: the tiny random model runs on shared CPUs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from serve_app.cli import cli
from serve_app.client import TTSClient, UnprocessableEntityError
from serve_app.engine.types import FRAME_MS, SAMPLE_RATE
from tests.support_ray import free_port
from tests.support_tools import chromium, read_wav

MAX_MS = 6 * FRAME_MS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, path of the server's stderr) for a `serve --preset` process."""
    tmp = tmp_path_factory.mktemp("tiny-engine")
    port = free_port()
    log = tmp / "server.log"
    env = {**os.environ, "CSM_VOICES_DIR": str(tmp / "voices"), "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serve_app.cli", "serve", "--preset", "tiny-random", "--device", "cpu",
             "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=err, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not healthy in time:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def seconds(wav: bytes) -> float:
    pcm, rate = read_wav(wav)
    assert rate == SAMPLE_RATE and pcm.ndim == 1
    return len(pcm) / rate


def test_client_speaks_streams_and_gets_typed_errors(server) -> None:
    url, _ = server
    with TTSClient(url, timeout=120) as client:
        assert client.health()["status"] == "ok"
        assert client.info()["sample_rate"] == SAMPLE_RATE
        wav = client.speak("Hello there.", speaker=0, max_duration_ms=MAX_MS, seed=1)
        assert 0 < seconds(wav) <= MAX_MS / 1000
        streamed = b"".join(client.stream_speak("Hi again.", speaker=1, max_duration_ms=MAX_MS, seed=2))
        assert streamed[:4] == b"RIFF" and 0 < (len(streamed) - 44) / 2 / SAMPLE_RATE <= MAX_MS / 1000
        with pytest.raises(UnprocessableEntityError, match="speaker"):
            client.speak("Hi.", speaker=2)


def test_cli_speak_writes_a_wav_and_metrics_moved(server, tmp_path: Path) -> None:
    url, log = server
    out = tmp_path / "cli.wav"
    result = CliRunner().invoke(cli, ["--url", url, "speak", "From the command line.", "-o", str(out),
                                      "--stream", "--max-duration-ms", str(MAX_MS), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert 0 < seconds(out.read_bytes()) <= MAX_MS / 1000
    text = httpx.get(url + "/metrics").text
    frames = next(float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith("csm_frames_generated_total"))
    assert frames > 0
    assert 'csm_time_to_first_audio_seconds_count{endpoint="/speak"}' in text
    # The server logs one JSON line per request, carrying the id it answered with.
    rid = httpx.get(url + "/info", headers={"X-Request-ID": "tiny-e2e-1"}).headers["x-request-id"]
    assert rid == "tiny-e2e-1"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        if any(e.get("request_id") == rid and e.get("path") == "/info" for e in entries):
            break
        time.sleep(0.2)
    else:
        pytest.fail("no JSON access-log line for the request")


def test_playground_plays_the_real_engine(server, tmp_path: Path) -> None:
    url, _ = server
    with chromium() as browser:
        page = browser.new_page(accept_downloads=True)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "/")
        notice = page.locator("#model-notice")
        notice.wait_for(state="visible", timeout=10_000)
        assert "tiny-random" in notice.inner_text() and "noise" in notice.inner_text()
        page.evaluate("""() => { window.__events = [];
          const a = document.getElementById('player');
          a.addEventListener('playing', () => window.__events.push('playing')); }""")
        page.fill("#text", "Hello from the browser.")
        page.fill("#max-duration", str(MAX_MS))
        page.fill("#seed", "4")
        page.click("#speak")
        # Live playback starts with the first chunk; the finished file then either plays on from where
        # live playback is (the element fires 'playing') or, when live playback has already played it
        # all (a short clip from a slow CPU), is shown as played to its end.
        page.wait_for_function("""() => { const a = document.getElementById('player');
          return a.currentSrc && a.duration > 0 && (
            (window.__events.includes('playing') && (!a.paused || a.ended))
            || (a.ended && a.currentTime >= a.duration - 0.05)); }""", timeout=120_000)
        with page.expect_download() as download:
            page.click("#download")
        path = tmp_path / "page.wav"
        download.value.save_as(path)
        assert 0 < seconds(path.read_bytes()) <= MAX_MS / 1000
        assert errors == []
