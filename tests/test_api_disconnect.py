"""A client that leaves, streaming or not, cancels its generation over real HTTP: the engine's slot
is free again within moments, long before the utterance would have finished."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from serve_app.engine.engine import Engine
from serve_app.observability.logs import configure_logging
from tests.support_tools import api_app, serve_http

LONG = {"text": "A long answer that nobody will hear.", "max_duration_ms": 60_000, "seed": 1}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = Engine.from_preset("tiny-random", device="cpu", max_batch_size=1, max_waiting=0)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def url(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_http(api_app(engine, tmp_path_factory.mktemp("voices"))) as base:
        yield base


@contextlib.contextmanager
def _raw_post(url: str, path: str, body: dict) -> Iterator[None]:
    """A POST whose client hangs up when the block ends, whatever the server has done by then (a
    client's read timeout could fire before a busy machine's server has started the generation)."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
        )
        yield


def running(engine: Engine) -> int:
    return engine.loop.scheduler.counts()["running"]


def wait_until(condition, timeout: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        time.sleep(0.01)
    return time.monotonic() - start


def frames_so_far(engine: Engine) -> int:
    return engine.loop.steps


@pytest.mark.parametrize("stream", [False, True], ids=["whole-response", "streamed"])
def test_leaving_client_frees_the_slot(engine: Engine, url: str, stream: bool) -> None:
    stream_log = io.StringIO()
    handler = configure_logging("INFO", stream_log)
    try:
        with httpx.Client(base_url=url, timeout=httpx.Timeout(30, read=0.5)) as client:
            if stream:
                with client.stream("POST", "/speak", json={**LONG, "stream": True}) as response:
                    assert response.status_code == 200
                    audio = response.iter_bytes()  # held: a dropped iterator closes the stream
                    next(audio)  # the first audio...
                    assert running(engine) == 1
                # ...then the listener hangs up
            else:  # waits for the whole file while it is generated, then gives up
                with _raw_post(url, "/speak", LONG):
                    wait_until(lambda: running(engine) == 1, timeout=30.0)
        steps_at_leave = frames_so_far(engine)
        freed_after = wait_until(lambda: running(engine) == 0, timeout=5.0)
        assert frames_so_far(engine) - steps_at_leave < 750  # far from the 750 frames of 60 s
        # The only slot serves the next request at once (no 503 from a slot held for nobody).
        r = httpx.post(url + "/speak", json={"text": "Next.", "max_duration_ms": 240}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        logging.getLogger().removeHandler(handler)
    print(f"slot freed {freed_after * 1000:.0f} ms after the client left")
    if not stream:
        lines = [line for line in stream_log.getvalue().splitlines() if '"/speak"' in line]
        assert any('"status": 499' in line for line in lines), lines
