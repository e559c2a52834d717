"""The API app's own share of first audio over real HTTP, with an engine that costs nothing.

The app (`create_app`, API keys and the rate limiter on) is served by uvicorn in a subprocess, over
the test suite's fake engine with its audio made once (so a request's time is the app's alone); one
asyncio client in this process streams `POST /speak` requests, one at a time and in bursts, and
reads `Server-Timing`: `app` (the request's arrival to the response's start) less `api` (the engine
call to its first chunk) is the app's own work before and after the engine call (auth, limits,
parsing, normalization, thread-pool hops). `--root` serves another code tree's app, for an A/B.
CPU only: this is the ingress's Python.

    python benchmarks/bench_app.py [--root /path/to/other/tree]   # writes <date>-cpu-app.json
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]

from cpu_results import nearest_rank, write_cpu_result

BODY = {
    "text": "The quick brown fox jumps over the lazy dog near the river bank today.",
    "stream": True,
    "response_format": "pcm",
}
KEY = "bench-key"

SERVER = """
import sys
root, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path[:0] = [root, root + "/tests"]
import uvicorn
from serve_app.api.app import create_app
from serve_app.api.settings import ApiSettings
from support_api import FakeEngine

class MadeOnce(FakeEngine):
    made = {}
    def _make(self, request):
        n = self.frames_for(request)
        if n not in self.made:
            self.made[n] = super()._make(request)
        return self.made[n]

settings = ApiSettings(api_keys=key, rate_limit_per_minute=10_000_000, voices_dir="/tmp/bench-app-voices")
uvicorn.run(create_app(MadeOnce(chunk_frames=8), settings), host="127.0.0.1", port=port, log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one(client: httpx.AsyncClient, url: str) -> tuple[float, float]:
    """(app's own ms, app ms) of one streamed request."""
    headers = {"authorization": f"Bearer {KEY}"}
    async with client.stream("POST", f"{url}/speak", json=BODY, headers=headers) as r:
        r.raise_for_status()
        timing = dict(
            part.strip().split(";dur=") for part in r.headers["server-timing"].split(",") if ";dur=" in part
        )
        async for _ in r.aiter_bytes():
            pass
    return float(timing["app"]) - float(timing["api"]), float(timing["app"])


async def measure(url: str, serial: int, burst: int, bursts: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=2 * burst)) as client:
        for _ in range(20):  # warm-up
            await one(client, url)
        alone = [await one(client, url) for _ in range(serial)]
        together: list[tuple[float, float]] = []
        for _ in range(bursts):
            together += await asyncio.gather(*(one(client, url) for _ in range(burst)))
    own = sorted(o for o, _ in together)
    return {
        "app_own_ms_one_at_a_time_p50": round(statistics.median(o for o, _ in alone), 3),
        "burst": burst,
        "app_own_ms_burst_p50": round(statistics.median(own), 2),
        "app_own_ms_burst_p99": round(nearest_rank(own, 0.99), 2),
        "app_own_ms_burst_max": round(own[-1], 2),
        "app_ms_burst_p50": round(statistics.median(a for _, a in together), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT), help="the code tree whose app is served")
    p.add_argument("--serial", type=int, default=200)
    p.add_argument("--burst", type=int, default=64)
    p.add_argument("--bursts", type=int, default=5)
    args = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-c", SERVER, args.root, str(port), KEY])
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        row = asyncio.run(measure(url, args.serial, args.burst, args.bursts))
    finally:
        server.terminate()
        server.wait(10)
    print(row, flush=True)
    revision = subprocess.run(
        ["git", "-C", args.root, "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True
    ).stdout.strip()
    write_cpu_result("app", {"root": args.root, "revision": revision or None, **row})


if __name__ == "__main__":
    main()
