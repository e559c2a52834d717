"""WebSocket input streaming, measured as a voice agent feels it: the time from a sentence boundary
to the first audio, and the real-time factor of a long-form stream. Writes one JSON file.

    PYTHONPATH=. python3 benchmarks/bench_ws.py --url http://127.0.0.1:8000 --out benchmarks/results
    PYTHONPATH=. python3 benchmarks/bench_ws.py --serve csm-1b-random --out benchmarks/results   # GPU
    PYTHONPATH=. python3 benchmarks/bench_ws.py --smoke --out /tmp/bench-ws                      # CPU

`--url` measures a running server (e.g. `serve run` of a config with `model: csm-1b-random`). `--serve`
starts the API in this process (uvicorn, no Ray) over an engine of its own from a preset: `csm-1b-random`
(CSM-1B's shapes, random weights, on the GPU) or `tiny-random`; the silence guard is off. `--smoke` is
`--serve tiny-random` on the CPU with short runs. Sections:

  ttfa      N contexts, one after another on one socket: text arrives in pieces, a few tens of ms
            apart, like a language model's; the clock starts when the piece that makes the first
            sentence certain (the start of the next one) is sent, and stops at the first audio message.
  longform  one context given a long text at once, closed, with `max_duration_ms` of audio (5 minutes):
            wall time to `done` over audio seconds (the real-time factor; < 1 is faster than real
            time), time to the first audio, the longest wait between two audio messages, and the
            playback delay a client would need so that no chunk arrives after its play time.

Random weights never end an utterance early: each segment runs to its length cap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from websockets.asyncio.client import connect

FIRST = ["Thanks for", " asking", ", I think", " the answer", " is yes."]
BOUNDARY = " Let"  # the next sentence starts: the first one is certain
REST = [" me explain", " why that", " is so."]
PARAGRAPH = (
    "The lighthouse keeper climbed the stairs at dusk, as he had done for forty years. Below him the sea "
    "was grey and restless, and the wind carried the smell of rain. He trimmed the wick, polished the "
    "great lens, and waited for the dark to come. Somewhere out there a small boat was making for the "
    "harbour, late and alone. When the light finally turned, its beam swept across the water like a slow "
    "hand, and the boat turned with it. "
)


def ws_url(base: str) -> str:
    return base.rstrip("/").replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/v1/audio/speech/stream"


async def _first_audio(ws: Any, context_id: str) -> dict[str, Any]:
    while True:
        message = json.loads(await ws.recv())
        if message.get("context_id") != context_id:
            continue
        if message["type"] in ("audio", "error", "done"):
            return message


async def _drain(ws: Any, context_id: str) -> dict[str, Any]:
    while True:
        message = json.loads(await ws.recv())
        if message.get("context_id") == context_id and message["type"] == "done":
            return message


async def bench_ttfa(url: str, trials: int, gap_s: float, headers: dict[str, str]) -> dict[str, Any]:
    times = []
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        for trial in range(-1, trials):  # trial -1 warms up (and prepares the voice), untimed
            cid = f"ttfa-{trial}"
            for i, piece in enumerate(FIRST):
                message: dict[str, Any] = {"type": "text", "context_id": cid, "text": piece}
                if i == 0:
                    message.update(voice="0", output_format="pcm_24000", seed=trial + 1)
                await ws.send(json.dumps(message))
                await asyncio.sleep(gap_s)
            start = time.perf_counter()
            await ws.send(json.dumps({"type": "text", "context_id": cid, "text": BOUNDARY}))
            first = await _first_audio(ws, cid)
            if first["type"] != "audio":
                raise RuntimeError(f"no audio for {cid}: {first}")
            if trial >= 0:
                times.append(time.perf_counter() - start)
            await ws.send(json.dumps({"type": "cancel", "context_id": cid}))
            await _drain(ws, cid)
    ms = sorted(1000 * t for t in times)
    return {
        "trials": trials,
        "piece_gap_ms": 1000 * gap_s,
        "first_audio_after_boundary_ms": {
            "p50": round(statistics.median(ms), 1),
            "p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 1),
            "min": round(ms[0], 1),
            "max": round(ms[-1], 1),
        },
    }


async def bench_longform(url: str, audio_s: float, headers: dict[str, str]) -> dict[str, Any]:
    text = PARAGRAPH * max(1, round(audio_s * 15 / len(PARAGRAPH)) + 1)  # ~15 characters a second
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        start = time.perf_counter()
        await ws.send(json.dumps({
            "type": "text", "context_id": "long", "text": text, "voice": "0", "output_format": "pcm_24000",
            "max_duration_ms": int(audio_s * 1000), "seed": 1,
        }))
        await ws.send(json.dumps({"type": "close", "context_id": "long"}))
        arrivals: list[tuple[float, float]] = []  # (seconds since start, offset of the chunk in s)
        while True:
            message = json.loads(await ws.recv())
            now = time.perf_counter() - start
            if message["type"] == "audio":
                arrivals.append((now, message["offset_ms"] / 1000))
            elif message["type"] == "error":
                raise RuntimeError(f"long-form stream failed: {message}")
            elif message["type"] == "done":
                done, wall = message, now
                break
    audio = done["duration_ms"] / 1000
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
    delay = max(t - offset for t, offset in arrivals) if arrivals else None
    return {
        "text_chars": len(text),
        "audio_s": round(audio, 2),
        "wall_s": round(wall, 2),
        "real_time_factor": round(wall / audio, 4) if audio else None,
        "first_audio_ms": round(1000 * arrivals[0][0], 1) if arrivals else None,
        "longest_gap_between_chunks_ms": round(1000 * max(gaps), 1) if gaps else None,
        "playback_delay_needed_ms": round(1000 * delay, 1) if delay is not None else None,
        "segments": done["segments"],
        "finish_reason": done["finish_reason"],
        "chunks": len(arrivals),
    }


@contextlib.contextmanager
def local_server(preset: str, smoke: bool):
    """The API over an engine in this process, on a free loopback port; yields (url, description)."""
    import torch

    from serve_app.api.app import create_app
    from serve_app.api.settings import ApiSettings
    from serve_app.engine.engine import Engine
    from tests.support_api import serve_over_http

    if smoke:
        torch.set_num_threads(1)
    # Random weights never end an utterance and their audio may be quiet: the silence guard stays off.
    engine = Engine.from_preset(preset, silence_seconds=0.0)
    described = f"{preset} ({engine.loaded.info.get('device', 'cpu')}), in-process API (uvicorn, no Ray)"
    import tempfile

    settings = ApiSettings(voices_dir=Path(tempfile.mkdtemp(prefix="bench-ws-voices-")),
                           builtin_voice_ms=2000 if smoke else 6000)
    try:
        with serve_over_http(create_app(engine, settings)) as url:
            yield url, described
    finally:
        engine.close()


async def run(url: str, args: argparse.Namespace, res: dict[str, Any], save: Any) -> None:
    headers = {"x-request-timeout-seconds": "0"}  # Ray's proxy: no end-to-end limit on the session
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    target = ws_url(url)
    res["ttfa"] = await bench_ttfa(target, args.ttfa_trials, args.piece_gap_ms / 1000, headers)
    print("ttfa", res["ttfa"], flush=True)
    save()
    res["longform"] = await bench_longform(target, args.longform_s, headers)
    print("longform", res["longform"], flush=True)
    save()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server's base URL")
    p.add_argument("--serve", choices=["csm-1b-random", "tiny-random"], help="start the API in this process")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny preset, short runs")
    p.add_argument("--api-key", default=os.environ.get("CSM_API_KEY"))
    p.add_argument("--ttfa-trials", type=int, default=20)
    p.add_argument("--piece-gap-ms", type=float, default=30.0, help="time between text pieces")
    p.add_argument("--longform-s", type=float, default=300.0, help="audio of the long-form stream")
    p.add_argument("--out", default=None, help="output directory (default: $OUT, else benchmarks/results)")
    p.add_argument("--name", default=None, help="output file name without .json (default: <date>-ws-...)")
    args = p.parse_args()
    if args.smoke:
        args.serve = args.serve or "tiny-random"
        args.ttfa_trials, args.longform_s = min(args.ttfa_trials, 3), min(args.longform_s, 12.0)
    if bool(args.url) == bool(args.serve):
        p.error("give --url, or --serve (or --smoke)")
    out_dir = Path(args.out or os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "cpu-ws-smoke" if args.smoke else f"ws-{args.serve or 'url'}"
    path = out_dir / f"{args.name or dt.date.today().isoformat() + '-' + tag}.json"
    res: dict[str, Any] = {
        "benchmark": "csm-ws",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "PYTHONPATH=. python3 benchmarks/bench_ws.py " + " ".join(sys.argv[1:]),
        "host": platform.node(),
    }

    def save() -> None:
        path.write_text(json.dumps(res, indent=1))

    if args.url:
        res["server"] = args.url
        asyncio.run(run(args.url, args, res, save))
    else:
        with local_server(args.serve, args.smoke) as (url, described):
            res["server"] = described
            with contextlib.suppress(Exception):
                import torch

                res["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
            asyncio.run(run(url, args, res, save))
    save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
