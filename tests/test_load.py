"""A bounded load test: real HTTP on loopback against the real tiny engine, served from this process.

The engine gets 2 slots and 6 waiting places, so 16 concurrent clients overflow it. Under that
overload the service must answer only 200 (a well-formed WAV no longer than asked for) or 503 with
Retry-After, finish the whole run in bounded time, drain its queue, keep serving, and give back the
memory the run took. p50/p95 latency of the 200s is printed (`pytest -s`) and recorded as properties.
"""

from __future__ import annotations

import asyncio
import gc
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from serve_app.engine.types import FRAME_MS, SAMPLE_RATE
from tests.support_tools import api_app, serve_http

SLOTS = 2
WAITING = 6
REQUESTS = 40
CONCURRENCY = 16  # > SLOTS + WAITING: the first burst alone overflows the engine
DURATIONS_MS = (240, 320, 400)
TIME_LIMIT_S = 60.0
RSS_SLACK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    status: int
    seconds: float
    max_duration_ms: int
    retry_after: str | None
    body: bytes


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the API over a small engine (closed afterwards)."""
    from serve_app.engine.engine import Engine

    engine = Engine.from_preset("tiny-random", device="cpu", max_batch_size=SLOTS, max_waiting=WAITING)
    try:
        with serve_http(api_app(engine, tmp_path_factory.mktemp("load") / "voices")) as url:
            yield url
    finally:
        engine.close()


def rss_bytes() -> int:
    """Resident set size of this process (server, engine and clients all live here)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def settled_rss() -> int:
    gc.collect()
    return rss_bytes()


async def _fire(url: str, round_name: str) -> tuple[list[Outcome], float]:
    """REQUESTS requests, at most CONCURRENCY in flight; the first CONCURRENCY leave together."""
    gate = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)

    async with httpx.AsyncClient(base_url=url, timeout=TIME_LIMIT_S, limits=limits) as client:

        async def one(i: int) -> Outcome:
            max_ms = DURATIONS_MS[i % len(DURATIONS_MS)]
            body = {"text": f"{round_name} request number {i}.", "speaker": i % 2, "max_duration_ms": max_ms}
            async with gate:
                start = time.perf_counter()
                r = await client.post("/speak", json=body)
                return Outcome(
                    r.status_code,
                    time.perf_counter() - start,
                    max_ms,
                    r.headers.get("retry-after"),
                    r.content,
                )

        start = time.perf_counter()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(one(i) for i in range(REQUESTS))), timeout=TIME_LIMIT_S
        )
        return outcomes, time.perf_counter() - start


def run_load(url: str, round_name: str) -> tuple[list[Outcome], float]:
    return asyncio.run(_fire(url, round_name))


def wait_until_idle(url: str, timeout_s: float = 30.0) -> dict[str, int]:
    """Poll /info until the engine has nothing running or waiting (finished streams free their slots
    on the engine thread, a moment after the last chunk reached the client)."""
    deadline = time.monotonic() + timeout_s
    while True:
        engine = httpx.get(f"{url}/info", timeout=10).json()["engine"]
        if engine["running"] == 0 and engine["waiting"] == 0:
            return engine
        if time.monotonic() > deadline:
            raise AssertionError(f"engine still busy after the load: {engine}")
        time.sleep(0.02)  # poll interval, not a guess at when it is done


def check_outcomes(outcomes: list[Outcome], elapsed: float) -> list[float]:
    """The run's invariants; returns the latencies of the 200s."""
    assert len(outcomes) == REQUESTS and elapsed < TIME_LIMIT_S
    statuses = sorted({o.status for o in outcomes})
    assert set(statuses) <= {200, 503}, statuses
    ok = [o for o in outcomes if o.status == 200]
    busy = [o for o in outcomes if o.status == 503]
    # the queue starts empty, so at least SLOTS + WAITING are admitted, and nothing admitted is dropped
    assert len(ok) >= SLOTS + WAITING, [o.status for o in outcomes]
    assert busy, f"{CONCURRENCY} concurrent requests never overflowed {SLOTS} slots + {WAITING} waiting"
    for o in busy:
        assert o.retry_after is not None and o.retry_after.isdigit(), o
        assert b"overloaded" in o.body
    for o in ok:
        pcm, rate = sf.read(io.BytesIO(o.body), dtype="float32")
        assert rate == SAMPLE_RATE and pcm.ndim == 1
        assert 0 < len(pcm) * 1000 / rate <= o.max_duration_ms + FRAME_MS, (len(pcm), o.max_duration_ms)
        assert np.isfinite(pcm).all()
    return [o.seconds for o in ok]


def test_overload_gives_only_200_or_503_in_bounded_time_and_memory(
    service: str, record_property: pytest.RecordProperty
) -> None:
    url = service
    # Warm-up: the same load once, so weights, allocator pools, thread pools and caches are in place.
    check_outcomes(*run_load(url, "warm-up"))
    wait_until_idle(url)
    before = settled_rss()

    outcomes, elapsed = run_load(url, "measured")
    latencies = check_outcomes(outcomes, elapsed)
    refusals = [o.seconds for o in outcomes if o.status == 503]
    wait_until_idle(url)
    after = settled_rss()

    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    normal = httpx.post(f"{url}/speak", json={"text": "Still here.", "max_duration_ms": 240}, timeout=30)
    assert normal.status_code == 200 and normal.content[:4] == b"RIFF"

    p50, p95 = np.percentile(latencies, [50, 95])
    n_ok = len(latencies)
    growth = after - before
    report = {
        "requests": REQUESTS,
        "concurrency": CONCURRENCY,
        "ok": n_ok,
        "overloaded": REQUESTS - n_ok,
        "elapsed_s": round(elapsed, 2),
        "p50_ms": round(p50 * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
        "p95_503_ms": round(float(np.percentile(refusals, 95)) * 1000, 1),
        "rss_before_mib": round(before / 2**20, 1),
        "rss_after_mib": round(after / 2**20, 1),
        "rss_growth_mib": round(growth / 2**20, 1),
    }
    for key, value in report.items():
        record_property(key, value)
    print("\nload:", ", ".join(f"{k}={v}" for k, v in report.items()))
    assert growth < RSS_SLACK_BYTES, report
