"""A real `redis-server` for the Redis state backend's tests: one per test session, on a free port,
with no persistence, in a temporary directory.

Debian's `redis-server` (`apt-get install redis-server`; `.ci/run` installs it). Without it the
tests that need it skip, unless CSM_REQUIRE_REDIS=1 (CI), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """`redis://127.0.0.1:<port>/0` of a fresh server; flushed by `redis_flushed` between tests."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CSM_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is required here (apt-get install redis-server)")
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="redis-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start (exit code {process.poll()})")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
