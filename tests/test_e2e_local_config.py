"""The README's command, `serve run configs/serve/local.yaml`, as a subprocess: serves, then stops on SIGTERM.

The config is the local one with a free port (and a temporary voices directory), so it neither
collides with a developer's server on :8000 nor with the session's in-process Ray. Its own
RAY_TMPDIR keeps `serve run` from attaching to another Ray instance on this machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support_ray import free_port, local_config, worker_env

pytestmark = pytest.mark.ray

STARTUP_TIMEOUT_S = 90
STOP_TIMEOUT_S = 30


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve run exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"not healthy after {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def test_serve_run_local_config(tmp_path: Path) -> None:
    port = free_port()
    config_path = tmp_path / "local.yaml"
    config_path.write_text(yaml.safe_dump(local_config(port, tmp_path / "voices")))
    ray_tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"ray-serve-run-{os.getpid()}"
    env = {**os.environ, **worker_env(str(ray_tmp))}
    log = tmp_path / "serve.log"
    serve_cli = Path(sys.executable).with_name("serve")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(serve_cli), "run", str(config_path)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        response = httpx.post(f"{url}/speak", json={"text": "Hello.", "max_duration_ms": 400}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.content[:4] == b"RIFF"

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=STOP_TIMEOUT_S) is not None
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)
