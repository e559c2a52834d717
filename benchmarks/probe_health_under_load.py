"""/health while the model's queue is long: how fast, and with which status, a readiness probe is
answered through Ray Serve over HTTP while N long /speak requests keep the engine busy.

    csm-serve serve --config configs/serve/local.yaml &      # the CPU config (4 engine slots)
    python benchmarks/probe_health_under_load.py --url http://127.0.0.1:8000 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx


async def probe(url: str, requests: int, probes: int, audio_ms: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        for _ in range(240):  # until the service is up
            try:
                if (await client.get("/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1)
        body = {"text": "A request that keeps the engine busy for a while.", "max_duration_ms": audio_ms}
        load = [asyncio.ensure_future(client.post("/speak", json=body)) for _ in range(requests)]
        await asyncio.sleep(1.0)  # the queue fills
        answers = []
        for _ in range(probes):
            began = time.monotonic()
            response = await client.get("/health")
            answers.append({"status": response.status_code, "seconds": round(time.monotonic() - began, 3)})
            await asyncio.sleep(0.5)
        statuses = [r.status_code for r in await asyncio.gather(*load)]
    return {"load_requests": requests, "audio_ms": audio_ms, "probes": answers, "load_statuses": statuses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--audio-ms", type=int, default=20_000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--name", default="health-under-load", help="results file: <date>-cpu-<name>.json")
    args = parser.parse_args()
    result = asyncio.run(probe(args.url, args.requests, args.probes, args.audio_ms))
    result["command"] = (
        "csm-serve serve --config configs/serve/local.yaml; python benchmarks/probe_health_under_load.py "
        f"--requests {args.requests} --probes {args.probes} --audio-ms {args.audio_ms}"
    )
    print(json.dumps(result, indent=1))
    if args.out:
        path = args.out / f"{time.strftime('%Y-%m-%d')}-cpu-{args.name}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
