"""`csm-serve` commands against a server on loopback: speak, batch, voices, errors, serve wiring."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from serve_app import cli as cli_module
from serve_app.cli import cli, finish_streamed_wav
from serve_app.engine.types import FRAME_SAMPLES, SAMPLE_RATE
from tests.support_tools import (
    ToneEngine,
    api_app,
    pcm16,
    read_wav,
    serve_http,
    streaming_wav_header,
    tone,
    wav_bytes,
)


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    with serve_http(api_app(ToneEngine(), tmp_path_factory.mktemp("voices"))) as base:
        yield base


def run(url: str, *args: str, input: str | None = None):
    result = CliRunner().invoke(cli, ["--url", url, *args], input=input, catch_exceptions=False)
    return result


def duration(path: Path) -> float:
    pcm, rate = read_wav(path.read_bytes())
    assert rate == SAMPLE_RATE
    return len(pcm) / rate


def test_speak_writes_a_wav(url: str, tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    result = run(url, "speak", "Hello there, command line.", "-o", str(out), "--speaker", "1")
    assert result.exit_code == 0, result.output
    assert duration(out) == pytest.approx((2 + len("Hello there, command line.") // 4) * 0.08)
    assert f"wrote {out}" in result.output


def test_streamed_speak_writes_a_complete_wav(url: str, tmp_path: Path) -> None:
    out = tmp_path / "streamed.wav"
    result = run(url, "speak", "Streamed to a file as it is made.", "-o", str(out), "--stream",
                 "--max-duration-ms", "400")
    assert result.exit_code == 0, result.output
    assert "first audio after" in result.output
    assert duration(out) == pytest.approx(0.4)  # header sizes were filled in, so the file reads cleanly
    assert not list(tmp_path.glob("*.part"))


def test_speak_takes_formats_rates_and_speed(url: str, tmp_path: Path) -> None:
    text = "Telephone quality, twice as fast."
    seconds = (2 + len(text) // 4) * 0.08
    out = tmp_path / "call.ulaw"
    assert run(url, "speak", text, "-o", str(out), "--format", "ULAW_8000").exit_code == 0
    assert len(out.read_bytes()) == round(seconds * 8000)  # one byte per 8 kHz sample
    out = tmp_path / "call.mp3"
    assert run(url, "speak", text, "-o", str(out), "--format", "MP3").exit_code == 0  # any case
    assert out.read_bytes()[:3] in (b"ID3", b"\xff\xfb", b"\xff\xf3")
    out = tmp_path / "fast.wav"
    result = run(url, "speak", text, "-o", str(out), "--sample-rate", "16000", "--speed", "2", "--stream")
    assert result.exit_code == 0, result.output
    pcm, rate = read_wav(out.read_bytes())
    assert rate == 16000 and len(pcm) / rate == pytest.approx(seconds / 2, abs=0.03)


def test_speak_reads_stdin_writes_stdout_and_sends_context(url: str, tmp_path: Path) -> None:
    ref = tmp_path / "ref.wav"
    ref.write_bytes(wav_bytes(tone(0.2)))
    result = CliRunner().invoke(
        cli, ["--url", url, "speak", "-", "-o", "-", "--context-audio", str(ref), "--context-text", "hi"],
        input="Text from standard input.\n",
    )
    assert result.exit_code == 0
    assert result.stdout_bytes[:4] == b"RIFF"


def test_speak_lets_the_server_size_a_long_text(tmp_path: Path) -> None:
    """Without --max-duration-ms a text of several segments (a chapter from stdin) is spoken whole,
    as /speak sizes it, not cut at 10 s; the option still caps it."""
    text = " ".join(f"This is sentence number {i} of a text that runs well past one segment." for i in range(16))
    with serve_http(api_app(ToneEngine(), tmp_path / "voices", max_long_text_chars=5000)) as base:
        for stream in ([], ["--stream"]):
            out = tmp_path / "chapter.wav"
            result = CliRunner().invoke(cli, ["--url", base, "speak", "-", "-o", str(out), *stream], input=text)
            assert result.exit_code == 0, result.output
            assert duration(out) > 10
            capped = run(base, "speak", text, "-o", str(out), "--max-duration-ms", "2000", *stream)
            assert capped.exit_code == 0 and duration(out) <= 2.0


def test_speak_errors_print_the_server_message_and_exit_1(url: str, tmp_path: Path) -> None:
    out = tmp_path / "never.wav"
    result = run(url, "speak", "x" * 1000, "-o", str(out))
    assert result.exit_code == 1
    assert "HTTP 413" in result.output and "limit" in result.output
    assert not out.exists() and not list(tmp_path.iterdir())
    result = run(url, "speak", "Hi.", "-o", str(out), "--voice", "missing-voice")
    assert result.exit_code == 1 and "missing-voice" in result.output


def test_batch_writes_one_file_per_line_in_order(url: str, tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    texts = ["Line " + "x" * (4 * i) for i in range(1, 13)]  # no digits: normalization keeps lengths
    lines.write_text("\n".join(texts[:5]) + "\n\n   \n" + "\n".join(texts[5:]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run(url, "batch", str(lines), "-o", str(out), "--batch-size", "5", "--speaker", "1")
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.wav"))
    assert [f.name for f in files] == [f"{i:04d}.wav" for i in range(1, 13)]
    lengths = [duration(f) for f in files]
    assert lengths == sorted(lengths) and len(set(lengths)) == 12  # each text got its own, in order
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["text"] for m in manifest] == texts and manifest[0]["file"] == "0001.wav"
    assert "12/12" in result.output  # the progress bar reached the end


def test_batch_rejects_an_empty_file(url: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    result = run(url, "batch", str(empty), "-o", str(tmp_path / "o"))
    assert result.exit_code == 2 and "no text lines" in result.output


def test_voices_add_list_rm(url: str, tmp_path: Path) -> None:
    ref = tmp_path / "ref.wav"
    ref.write_bytes(wav_bytes(tone(0.5)))
    added = run(url, "voices", "add", "narrator", str(ref), "--transcript", "Some words.", "--speaker", "1")
    assert added.exit_code == 0, added.output
    voice_id = added.stdout.strip()
    listed = run(url, "voices", "list")
    assert f"{voice_id}\tnarrator" in listed.stdout
    as_json = json.loads(run(url, "voices", "list", "--json").stdout)
    assert [v["speaker"] for v in as_json if v["id"] == voice_id] == [1]
    out = tmp_path / "v.wav"
    assert run(url, "speak", "In the saved voice.", "-o", str(out), "--voice", voice_id).exit_code == 0
    removed = run(url, "voices", "rm", voice_id)
    assert removed.exit_code == 0 and voice_id not in run(url, "voices", "list").stdout
    again = run(url, "voices", "rm", voice_id)
    assert again.exit_code == 1 and "HTTP 404" in again.output


def test_health_info_and_url_from_the_environment(url: str) -> None:
    result = CliRunner().invoke(cli, ["health"], env={"CSM_SERVE_URL": url})
    assert result.exit_code == 0 and json.loads(result.stdout)["status"] == "ok"
    assert json.loads(run(url, "info").stdout)["sample_rate"] == SAMPLE_RATE


def test_unreachable_server_is_a_clean_error() -> None:
    result = run("http://127.0.0.1:9", "health")
    assert result.exit_code == 1 and "cannot reach" in result.output
    for url in ("127.0.0.1:9", "http://127.0.0.1:9"):  # no scheme: one line, not a traceback
        over_socket = run(url, "speak", "hi", "--ws", "-o", "-")
        assert over_socket.exit_code == 1 and "Traceback" not in over_socket.output, over_socket.output


def test_usage_errors_come_before_any_audio_is_made(tmp_path: Path) -> None:
    """The server is not even reachable: each of these is refused first, as a usage error."""
    url = "http://127.0.0.1:9"
    missing = run(url, "speak", "hi", "-o", str(tmp_path / "no" / "such" / "x.wav"))
    assert missing.exit_code == 2 and "folder does not exist" in missing.output
    assert run(url, "--timeout", "-1", "health").exit_code == 2
    rates = run(url, "speak", "hi", "--ws", "--format", "mp3_44100_128", "--sample-rate", "16000", "-o", "-")
    assert rates.exit_code == 2 and "contradicts" in rates.output
    flac = run(url, "speak", "hi", "--stream", "--format", "flac", "-o", str(tmp_path / "x.flac"))
    assert flac.exit_code == 2 and "flac is written whole" in flac.output


def test_serve_takes_at_most_one_source(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("applications: []\n")
    both = CliRunner().invoke(cli, ["serve", "--config", str(config), "--preset", "tiny-random"])
    assert both.exit_code == 2 and "at most one" in both.output
    port = CliRunner().invoke(cli, ["serve", "--config", str(config), "--port", "8123", "--host", "0.0.0.0"])
    assert port.exit_code == 2 and "--host, --port apply to --preset only" in port.output  # not ignored


def test_serve_without_a_source_runs_this_machines_config_and_says_which(monkeypatch) -> None:
    """No GPU here: the chosen config is the tiny random model's, and the banner says so."""
    import yaml

    ran: list[str] = []
    monkeypatch.setattr(cli_module, "run_serve_config", lambda path, drain_timeout_s, ingress: ran.append(path) or 0)
    monkeypatch.setattr("serve_app.deploy.local.cuda_device_count", lambda: 0)
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 0, result.output
    assert "RANDOM" in result.output and "noise" in result.output and "no CUDA GPU" in result.output
    assert yaml.safe_load(Path(ran[0]).read_text())["applications"][0]["args"]["model"] == "tiny-random"


def _forget_after_the_test(monkeypatch, *keys: str) -> None:
    """Unset `keys` now and restore them afterwards, even those the code under test sets (monkeypatch
    restores only what it recorded: deleting an unset variable records nothing)."""
    for key in keys:
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)


def test_serve_config_runs_the_draining_runner_with_the_package_importable(monkeypatch, tmp_path: Path) -> None:
    import serve_app.deploy.runner

    seen = {}

    def fake_run(path, drain_timeout_s):
        seen["args"] = (path, drain_timeout_s)
        seen["pythonpath"] = os.environ["PYTHONPATH"]
        return 0

    monkeypatch.setattr(serve_app.deploy.runner, "run_config", fake_run)
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    _forget_after_the_test(monkeypatch, "RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED")
    config = tmp_path / "local.yaml"
    config.write_text("applications: []\n")
    result = CliRunner().invoke(cli, ["serve", "--config", str(config), "--drain-timeout", "7"])
    assert result.exit_code == 0, result.output
    assert seen["args"] == (str(config), 7.0)
    root = str(Path(cli_module.__file__).resolve().parent.parent)
    assert seen["pythonpath"].split(os.pathsep) == [root, "/somewhere/else"]


def test_serve_config_starts_ray_with_the_chosen_ingress(monkeypatch, tmp_path: Path) -> None:
    import serve_app.deploy.ingress
    import serve_app.deploy.runner

    seen = {}
    monkeypatch.setattr(
        serve_app.deploy.runner, "run_config",
        lambda path, drain_timeout_s: seen.setdefault("env", os.environ.get("RAY_SERVE_ENABLE_HA_PROXY")) and 0,
    )
    _forget_after_the_test(
        monkeypatch, "RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_ADDRESS", "PYTHONPATH"
    )
    monkeypatch.setattr(serve_app.deploy.ingress, "haproxy_binary", lambda: "/usr/bin/haproxy")
    config = tmp_path / "prod.yaml"
    config.write_text("http_options: {host: 0.0.0.0, port: 8000}\napplications: []\n")
    result = CliRunner().invoke(cli, ["serve", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "HTTP ingress: haproxy (fastest measured)" in result.output
    assert seen["env"] == "1" and os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"

    seen.clear()
    result = CliRunner().invoke(cli, ["serve", "--config", str(config), "--ingress", "proxy"])
    assert result.exit_code == 0, result.output
    assert seen["env"] == "0" and "HTTP ingress: proxy (requested)" in result.output

    monkeypatch.setattr(serve_app.deploy.ingress, "haproxy_binary", lambda: None)
    result = CliRunner().invoke(cli, ["serve", "--config", str(config), "--ingress", "haproxy"])
    assert result.exit_code == 2 and "csm-serve[haproxy]" in result.output


def test_serve_preset_logs_each_request_once(monkeypatch) -> None:
    """The app's access log line (request id, key fingerprint) is the only one: uvicorn's own access
    log, which would repeat each request with the client's address and the URL's query, is off."""
    import signal

    import uvicorn

    import serve_app.engine.engine as engine_module
    import serve_app.observability.logs as logs_module

    started: list[uvicorn.Config] = []

    class FakeServer:
        def __init__(self, config: uvicorn.Config) -> None:
            started.append(config)

        def run(self) -> None:
            pass

    monkeypatch.setattr(cli_module, "build_preset_app", lambda preset, device=None: object())
    monkeypatch.setattr(uvicorn, "Server", FakeServer)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    monkeypatch.setattr(logs_module, "configure_logging", lambda level: None)
    monkeypatch.setattr(engine_module, "lower_switch_interval", lambda: None)
    # the process owns its engine: what the build left is frozen out of later collections, after the build
    order: list[str] = []
    monkeypatch.setattr(cli_module, "build_preset_app", lambda preset, device=None: order.append("build") or object())
    monkeypatch.setattr(engine_module, "freeze_built_objects", lambda: order.append("freeze"))
    cli_module.run_preset("tiny-random", device=None, host="127.0.0.1", port=0, log_level="info")
    assert len(started) == 1 and started[0].access_log is False
    assert order == ["build", "freeze"]


def test_finish_streamed_wav_fills_in_sizes(tmp_path: Path) -> None:
    path = tmp_path / "s.wav"
    path.write_bytes(streaming_wav_header() + pcm16(tone(3 * FRAME_SAMPLES / SAMPLE_RATE)))
    finish_streamed_wav(path)
    assert duration(path) == pytest.approx(0.24)


def test_module_entry_point_prints_help() -> None:
    result = subprocess.run([sys.executable, "-m", "serve_app.cli", "--help"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0
    for command in ("serve", "speak", "batch", "voices"):
        assert command in result.stdout


def test_the_preset_server_counts_a_clients_own_address_not_its_forwarded_for() -> None:
    """A per-address rate limit counts `request.client`: an X-Forwarded-For a local client sets must
    not choose it (uvicorn would trust 127.0.0.1's header by default)."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from tests.support_api import serve_over_http

    async def address(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.client.host if request.client else "")

    app = Starlette(routes=[Route("/", address)])
    config = cli_module.preset_server_config(app, host="127.0.0.1", port=0, log_level="warning")
    with serve_over_http(app, config) as base_url:
        r = httpx.get(base_url, headers={"x-forwarded-for": "203.0.113.9"})
    assert r.text == "127.0.0.1"
