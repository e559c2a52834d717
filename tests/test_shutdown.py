"""Stopping the server while a stream is in flight, with real processes, signals and HTTP.

Also the README's `serve run configs/serve/local.yaml`: it serves, and stops on Ctrl-C.

- `csm-serve serve --config` (Ray Serve, what the image runs) and `csm-serve serve --preset` (one
  process): SIGTERM, as `docker stop` or Kubernetes send, lets the stream finish, then the process
  exits with status 0.
- Ray's own `serve run`: Ctrl-C (SIGINT) shuts Serve down and exits with status 0, but Ray stops its
  HTTP proxies first, so the stream is cut; it ends at once, it never hangs.

None of them may print a native abort, a core dump, Ray's native signal trace or a Python traceback.
Each server gets its own port and its own Ray directory (no collision with the session's Ray).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support_ray import free_port, local_config, worker_env

STARTUP_TIMEOUT_S = 180
STOP_TIMEOUT_S = 90  # the drain, then the ingress replicas' 30 s direct-ingress draining period
STREAM_MS = 8000
STREAM_BYTES = STREAM_MS * 24 * 2  # 16-bit PCM at 24 kHz
FORBIDDEN = ("Aborted", "core dumped", "SIGABRT", "*** SIGTERM received", "Traceback (most recent call last)")


@dataclass
class StreamOutcome:
    status: int | None = None
    received: int = 0
    error: str | None = None
    seconds: float = 0.0


def _default_stop_signals() -> None:
    """In the server's process before exec: SIGINT and SIGTERM at their defaults and unblocked, as
    from a terminal, whatever the test process (and the libraries in it) did with them."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _signal_state(pid: int) -> str:
    """The process's ignored, blocked and caught signal masks (for a failure message)."""
    with contextlib.suppress(OSError):
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        return " ".join(line.replace("\t", "") for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt")))
    return "unknown"


@contextlib.contextmanager
def _server(
    command: list[str], port: int, log: Path, ray_tmp: Path
) -> Iterator[subprocess.Popen]:
    env = {**os.environ, **worker_env(str(ray_tmp)), "CSM_VOICES_DIR": str(log.parent / "voices")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_stop_signals,  # noqa: PLW1509 - the child runs nothing else before exec
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"{command[:4]} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"not healthy after {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)


def _stop_during_a_stream(
    port: int,
    process: subprocess.Popen,
    sig: signal.Signals,
    log: Path,
) -> tuple[StreamOutcome, int, int | str]:
    """Start a stream, send `sig` once audio flows, try a new request a second later; return how the
    stream ended, the exit status, and the new request's status (or its error)."""
    outcome, flowing = StreamOutcome(), threading.Event()
    body = {"text": "Speech that is still streaming when the server is told to stop.", "stream": True,
            "response_format": "pcm", "max_duration_ms": STREAM_MS}

    def read() -> None:
        started = time.monotonic()
        try:
            with httpx.stream("POST", f"http://127.0.0.1:{port}/speak", json=body, timeout=60) as response:
                outcome.status = response.status_code
                for chunk in response.iter_raw():
                    outcome.received += len(chunk)
                    flowing.set()
        except httpx.HTTPError as exc:
            outcome.error = repr(exc)
        finally:
            outcome.seconds = time.monotonic() - started
            flowing.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert flowing.wait(60), "no audio before the signal"
    state = _signal_state(process.pid)
    process.send_signal(sig)
    time.sleep(1.0)
    try:
        late: int | str = httpx.post(f"http://127.0.0.1:{port}/speak", json={"text": "Too late."}, timeout=10).status_code
    except httpx.HTTPError as exc:
        late = type(exc).__name__
    reader.join(STOP_TIMEOUT_S)
    assert not reader.is_alive(), "the stream hung after the signal"
    signalled = time.monotonic()
    try:
        return outcome, process.wait(timeout=STOP_TIMEOUT_S), late
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {time.monotonic() - signalled:.0f} s after {sig.name} ({state}); its log ends:\n"
                    + log.read_text(errors="replace")[-4000:])


def _assert_clean_exit(status: int, log: Path, port: int) -> None:
    output = log.read_text(errors="replace")
    assert status == 0, f"exit status {status}:\n{output[-4000:]}"
    for marker in FORBIDDEN:
        assert marker not in output, f"{marker!r} in the output:\n{output[-4000:]}"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def _config_file(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(local_config(port, tmp_path / "voices")))
    return path


def _ray_tmp() -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"ray-stop-{os.getpid()}-{time.monotonic_ns() % 10**6}"


@pytest.mark.ray
@pytest.mark.parametrize("ingress", ["proxy", "haproxy"])
def test_csm_serve_config_drains_a_stream_on_sigterm(tmp_path: Path, ingress: str) -> None:
    """Behind Ray's Python proxy, and behind its HAProxy ingress (where handles need an event loop)."""
    port, log = free_port(), tmp_path / "serve.log"
    config = str(_config_file(tmp_path, port))
    command = [sys.executable, "-m", "serve_app.cli", "serve", "--config", config, "--ingress", ingress]
    with _server(command, port, log, _ray_tmp()) as process:
        outcome, status, late = _stop_during_a_stream(port, process, signal.SIGTERM, log)
    assert (outcome.status, outcome.error, outcome.received) == (200, None, STREAM_BYTES), outcome
    assert late == 503  # refused with Retry-After while the stream finishes, not the proxy's 404
    _assert_clean_exit(status, log, port)
    assert "drained" in log.read_text() and "no drain board" not in log.read_text()
    if ingress == "haproxy":
        assert subprocess.run(["pgrep", "-x", "haproxy"], check=False).returncode == 1  # stopped with Ray
    print(f"\ncsm-serve --config ({ingress}), SIGTERM mid-stream: the stream completed ({outcome.seconds:.1f} s), exit 0")


@pytest.mark.ray
def test_serve_run_stops_on_sigint_and_the_stream_ends(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    command = [str(Path(sys.executable).with_name("serve")), "run", str(_config_file(tmp_path, port))]
    with _server(command, port, log, _ray_tmp()) as process:
        outcome, status, _ = _stop_during_a_stream(port, process, signal.SIGINT, log)
    assert outcome.status == 200
    # Ray removes its proxy at once: the stream is cut (no final chunk) unless it had just finished.
    assert outcome.received == STREAM_BYTES or "incomplete chunked read" in (outcome.error or ""), outcome
    _assert_clean_exit(status, log, port)
    print(f"\nserve run, SIGINT mid-stream: stream ended after {outcome.received} of {STREAM_BYTES} bytes, exit 0")


def test_csm_serve_preset_drains_a_stream_on_sigterm(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    command = [sys.executable, "-m", "serve_app.cli", "serve", "--preset", "tiny-random", "--device", "cpu",
               "--port", str(port)]
    with _server(command, port, log, _ray_tmp()) as process:
        outcome, status, late = _stop_during_a_stream(port, process, signal.SIGTERM, log)
    assert (outcome.status, outcome.error, outcome.received) == (200, None, STREAM_BYTES), outcome
    assert late == "ConnectError"  # uvicorn stopped listening at once
    _assert_clean_exit(status, log, port)
