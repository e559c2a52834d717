"""The service as its users meet it: many streaming clients over HTTP against a running server.

Every request is a streaming `POST /speak` (`response_format: pcm`, so each body byte is audio:
16-bit mono at the server's sample rate) with a fixed `max_duration_ms`; random weights never end
early, so each stream carries its full length. Phases, each written to the JSON as it finishes:

  idle       one client, requests one after another: time to first audio byte
  burst      N requests sent at once (`--burst`): time to first audio byte, p50/p90/p99
  streams    N clients in a closed loop for `--window-s` seconds each, for every N in `--streams`:
             audio seconds received per second, time to first byte, each finished stream's
             real-time factor (wall time / audio time) and its worst playback stall (how late a byte
             arrived against real-time playback that started at the first byte), the 503 rate, and
             what the engine loop did meanwhile (its `/info` counters before and after the level:
             ms per iteration in each phase, rows per decode step)
  poisson    open-loop arrivals at `--poisson-rate` requests/s (or `--poisson-load` x the best
             measured capacity) for `--poisson-s` seconds: time to first byte and errors

    python benchmarks/bench_http.py --url http://127.0.0.1:8000 --out benchmarks/results \\
        --name 2026-12-02-nvidia-h200-http --engine-json benchmarks/results/2026-12-02-nvidia-h200.json

With `--engine-json` (the in-process engine benchmark of the same run) the JSON also carries
HTTP / engine ratios, so the cost of Ray Serve and HTTP is a number. The client is one asyncio
process (aiohttp); its own CPU time is reported so a saturated client is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import host_probe  # a sibling module, importable once its folder is on the path

PROMPTS = [
    "The quick brown fox jumps over the lazy dog while seven happy children sing songs about summer rain.",
    "Thanks for calling, I can help you with that order right away if you give me its number.",
    "Streaming speech has to start quickly, because every pause feels longer on a phone call.",
    "Tomorrow will be sunny in the morning, with clouds and a little rain in the late afternoon.",
]


@dataclass
class Result:
    """One request as the client saw it (times in seconds from the phase's start)."""

    start: float
    status: int = 0
    first_byte: float | None = None
    end: float | None = None
    audio_bytes: int = 0
    max_stall_s: float = 0.0
    arrivals: list[tuple[float, int]] = field(default_factory=list, repr=False)
    error: str | None = None
    server_ms: dict[str, float] = field(default_factory=dict)  # Server-Timing: first audio at the API, engine

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and self.end is not None

    @property
    def ttfa_ms(self) -> float | None:
        return None if self.first_byte is None else (self.first_byte - self.start) * 1000


class Client:
    def __init__(self, url: str, api_key: str | None, audio_ms: int, sample_rate: int, max_conn: int) -> None:
        self.url = url.rstrip("/")
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.audio_ms = audio_ms
        self.bytes_per_s = 2 * sample_rate
        self.max_conn = max_conn
        self.session: aiohttp.ClientSession | None = None
        self.seq = 0

    async def __aenter__(self) -> Client:  # noqa: PYI034 - a plain class, not subclassed
        connector = aiohttp.TCPConnector(limit=self.max_conn, force_close=False)
        timeout = aiohttp.ClientTimeout(total=600, sock_connect=30)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def speak(self, t0: float, deadline: float | None = None) -> Result:
        """One streaming request; stops reading (and closes, which cancels it) at `deadline`."""
        assert self.session is not None
        self.seq += 1
        body = {
            "text": PROMPTS[self.seq % len(PROMPTS)],
            "speaker": self.seq % 2,
            "max_duration_ms": self.audio_ms,
            "stream": True,
            "response_format": "pcm",
            "normalize": False,
        }
        res = Result(start=time.perf_counter() - t0)
        try:
            async with self.session.post(f"{self.url}/speak", json=body, headers=self.headers) as resp:
                res.status = resp.status
                res.server_ms = server_timing(resp.headers.get("server-timing", ""))
                if resp.status != 200:
                    await resp.read()
                    res.end = time.perf_counter() - t0
                    return res
                async for chunk in resp.content.iter_any():
                    now = time.perf_counter() - t0
                    if not chunk:
                        continue
                    if res.first_byte is None:
                        res.first_byte = now
                    else:  # how late this byte is against playback that began at the first byte
                        due = res.first_byte + res.audio_bytes / self.bytes_per_s
                        res.max_stall_s = max(res.max_stall_s, now - due)
                    res.audio_bytes += len(chunk)
                    res.arrivals.append((now, len(chunk)))
                    if deadline is not None and now >= deadline:
                        res.error = "cut at window end"
                        return res
                res.end = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - counted as an error of this request
            res.error = f"{type(exc).__name__}: {exc}"[:200]
            res.end = time.perf_counter() - t0
        return res


def server_timing(header: str) -> dict[str, float]:
    """`api;dur=12.5, engine;dur=9.1` -> {"api": 12.5, "engine": 9.1} (malformed parts skipped)."""
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";")
        for param in rest.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur" and name:
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return round(values[lo] + (values[hi] - values[lo]) * (k - lo), 2)


def summary(results: list[Result], bytes_per_s: int) -> dict[str, Any]:
    ttfa = [r.ttfa_ms for r in results if r.ttfa_ms is not None and r.status == 200]
    done = [r for r in results if r.ok and r.audio_bytes]
    rtf = [(r.end - r.start) / (r.audio_bytes / bytes_per_s) for r in done]  # type: ignore[operator]
    stalls = [r.max_stall_s * 1000 for r in done]
    n = len(results)
    hops: dict[str, Any] = {}
    for name in ("app", "api", "engine"):  # first audio as the server saw it (Server-Timing)
        values = [r.server_ms[name] for r in results if name in r.server_ms and r.status == 200]
        hops[f"{name}_first_audio_ms_p50"] = pct(values, 50)
        hops[f"{name}_first_audio_ms_p99"] = pct(values, 99)
    # The engine's share before the request's first step: its prompt, the wait for an iteration.
    admitted = [r.server_ms["admit"] for r in results if "admit" in r.server_ms and r.status == 200]
    hops["engine_admitted_ms_p50"], hops["engine_admitted_ms_p99"] = pct(admitted, 50), pct(admitted, 99)
    # ... and of it, the part before its sequence was queued for the loop (its prompt built).
    queued = [r.server_ms["queue"] for r in results if "queue" in r.server_ms and r.status == 200]
    hops["engine_queued_ms_p50"], hops["engine_queued_ms_p99"] = pct(queued, 50), pct(queued, 99)
    # The app's wait for a rate-limit token (a hop to the shared state), part of its share.
    limit = [r.server_ms["limit"] for r in results if "limit" in r.server_ms and r.status == 200]
    hops["app_limit_ms_p50"], hops["app_limit_ms_p99"] = pct(limit, 50), pct(limit, 99)
    # The first chunk's way between the server's layers (`trace_hops`): in_relay / out_relay the API
    # to a model replica through Ray and back, in_engine / out_engine on to the engine and back.
    names = sorted({k for r in results for k in r.server_ms if k.startswith(("in_", "out_"))})
    for name in names:
        values = [r.server_ms[name] for r in results if name in r.server_ms and r.status == 200]
        hops[f"hop_{name}_ms_p50"], hops[f"hop_{name}_ms_p99"] = pct(values, 50), pct(values, 99)
    return {
        "requests": n,
        "ok": len(done),
        # Finished with a 200 but no audio: an utterance cannot be empty, so these are faults.
        "empty_audio": sum(1 for r in results if r.ok and not r.audio_bytes),
        "status_503": sum(r.status == 503 for r in results),
        "rate_503": round(sum(r.status == 503 for r in results) / n, 4) if n else None,
        "errors": sum(1 for r in results if r.status not in (200, 503) or (r.error and "cut" not in r.error)),
        "ttfa_ms_p50": pct(ttfa, 50),
        "ttfa_ms_p90": pct(ttfa, 90),
        "ttfa_ms_p99": pct(ttfa, 99),
        "ttfa_ms_max": round(max(ttfa), 2) if ttfa else None,
        "rtf_p50": pct(rtf, 50),
        "rtf_max": round(max(rtf), 3) if rtf else None,
        "stall_ms_p50": pct(stalls, 50),
        "stall_ms_max": round(max(stalls), 1) if stalls else None,
        **hops,
    }


async def idle(client: Client, trials: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    results = [await client.speak(t0) for _ in range(trials)]
    return {"trials": trials, **summary(results, client.bytes_per_s)}


async def burst(client: Client, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(client.speak(t0) for _ in range(n)))
    return {"arrivals": n, **summary(list(results), client.bytes_per_s)}


async def neighbour(client: Client, other: Client, flood: int, after_s: float) -> dict[str, Any]:
    """`flood` streams at once from `client`'s key; `after_s` later, when they wait in the queues, one
    stream from `other`'s key (a caller of its own) and one more from `client`'s (behind its own
    queue), at the same moment: what each waits for its first audio."""
    t0 = time.perf_counter()
    flooding = [asyncio.ensure_future(client.speak(t0)) for _ in range(flood)]
    await asyncio.sleep(after_s)
    own, behind = await asyncio.gather(other.speak(t0), client.speak(t0))
    flooded = list(await asyncio.gather(*flooding))
    return {
        "flooding_requests": flood,
        "after_s": after_s,
        "own_caller": summary([own], client.bytes_per_s),
        "flooding_callers_queue": summary([behind], client.bytes_per_s),
        "flooding": summary(flooded, client.bytes_per_s),
        # when the flood's streams began and finished, by second from its start: a gap with none of
        # either is time the service left its slots empty while requests waited
        "flooding_first_audio_per_s": per_second([r.first_byte for r in flooded if r.first_byte is not None]),
        "flooding_ends_per_s": per_second([r.end for r in flooded if r.end is not None]),
    }


def per_second(times: list[float]) -> dict[str, int]:
    """How many of `times` (seconds) fall in each whole second, keyed by the second, in order."""
    counts: dict[int, int] = {}
    for t in times:
        counts[int(t)] = counts.get(int(t), 0) + 1
    return {str(second): counts[second] for second in sorted(counts)}


FRAME_S = 0.08
"""Audio seconds per decode step of a stream (one 80 ms frame)."""


async def engine_stats(client: Client) -> dict[str, Any] | None:
    """The engine loop's counters from `/info` (steps, phase seconds), or None when not given. With
    several model replicas `/info` answers from one of them."""
    assert client.session is not None
    try:
        async with client.session.get(f"{client.url}/info", headers=client.headers) as r:
            engine = (await r.json()).get("engine", {}) if r.status == 200 else {}
    except (aiohttp.ClientError, ValueError):
        return None
    if "steps" not in engine or "timings" not in engine:
        return None
    return {"steps": engine["steps"], **engine["timings"]}


def engine_delta(
    before: dict[str, Any] | None, after: dict[str, Any] | None, audio_s: float
) -> dict[str, Any]:
    """What the engine loop did between two `engine_stats` snapshots while the clients received
    `audio_s` seconds of audio: its iterations, milliseconds per iteration in each phase, and the
    rows of a decode step (frames received / steps), to set beside the in-process churn figures."""
    if not before or not after:
        return {}
    iterations = after["iterations"] - before["iterations"]
    steps = after["steps"] - before["steps"]
    if iterations <= 0:
        return {}
    phases = {
        k: round((after[f"{k}_s"] - before[f"{k}_s"]) * 1000 / iterations, 3)
        for k in ("wait", "launch", "host")
    }
    return {
        "loop_iterations": int(iterations),
        "loop_ms_per_iteration": phases,
        "rows_per_step": round(audio_s / FRAME_S / steps, 1) if steps > 0 else None,
    }


async def closed_loop(client: Client, streams: int, window_s: float) -> dict[str, Any]:
    """`streams` clients each issuing requests back to back for `window_s` seconds."""
    before = await engine_stats(client)
    t0 = time.perf_counter()
    results: list[Result] = []

    async def worker() -> None:
        while time.perf_counter() - t0 < window_s:
            results.append(await client.speak(t0, deadline=window_s))

    await asyncio.gather(*(worker() for _ in range(streams)))
    in_window = sum(b for r in results for t, b in r.arrivals if t <= window_s)
    out = summary(results, client.bytes_per_s)
    # Share of the window the clients spent inside a request: well below 1, the time went between
    # requests (a saturated client), not to the server.
    busy = sum(min(r.end if r.end is not None else window_s, window_s) - r.start for r in results)
    received_s = sum(r.audio_bytes for r in results) / client.bytes_per_s
    return {
        "streams": streams,
        "audio_s_per_s": round(in_window / client.bytes_per_s / window_s, 2),
        "client_busy": round(busy / (streams * window_s), 3),
        **out,
        "engine": engine_delta(before, await engine_stats(client), received_s),
    }


async def poisson(client: Client, rate: float, seconds: float, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    t0 = time.perf_counter()
    tasks = []
    at = rng.expovariate(rate)
    while at < seconds:
        delay = at - (time.perf_counter() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(client.speak(t0)))
        at += rng.expovariate(rate)
    results = list(await asyncio.gather(*tasks))
    return {"rate": round(rate, 3), "seconds": seconds, **summary(results, client.bytes_per_s)}


def ratios(http: dict[str, Any], engine: dict[str, Any]) -> dict[str, Any]:
    """HTTP-through-Ray over the in-process engine of the same run (where both were measured)."""
    out: dict[str, Any] = {}
    if http.get("idle", {}).get("ttfa_ms_p50") and engine.get("ttfa_ms_p50"):
        out["idle_ttfa_http_over_engine"] = round(http["idle"]["ttfa_ms_p50"] / engine["ttfa_ms_p50"], 2)
    eng = {t["streams"]: t["audio_s_per_s"] for t in engine.get("throughput", [])}
    out["throughput_http_over_engine"] = [
        {"streams": t["streams"], "ratio": round(t["audio_s_per_s"] / eng[t["streams"]], 3)}
        for t in http.get("throughput", [])
        if eng.get(t["streams"])
    ]
    return out


def plot(http: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = http.get("throughput", [])
    if not rows:
        return
    n = [r["streams"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(n, [r["audio_s_per_s"] for r in rows], "o-", label="over HTTP")
    a.plot(n, n, ":", color="gray", label="real time for every stream")
    a.set(xscale="log", yscale="log", xlabel="concurrent streams", ylabel="audio s per s")
    a.legend()
    for key, style in (("ttfa_ms_p50", "o-"), ("ttfa_ms_p99", "s--")):
        b.plot(n, [r[key] or float("nan") for r in rows], style, label=key.replace("ttfa_ms_", ""))
    b.set(xscale="log", xlabel="concurrent streams", ylabel="time to first audio byte (ms)")
    b.legend()
    fig.suptitle(http.get("title", "csm-serve over HTTP"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{args.name}.json"
    max_streams = max([*args.streams, args.burst, args.neighbour + 1, 1])  # the flood and its caller's one more
    result: dict[str, Any] = {
        "benchmark": "csm-http",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "url": args.url,
        "audio_ms_per_request": args.audio_ms,
        "notes": args.notes,
        "host": host_probe.probe(),  # the client machine's speed, to compare runs on other machines
    }

    def save() -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result["client_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 1)
        json_path.write_text(json.dumps(result, indent=2) + "\n")

    async with Client(args.url, args.api_key, args.audio_ms, args.sample_rate, 4 * max_streams) as client:
        assert client.session is not None
        async with client.session.get(f"{args.url.rstrip('/')}/info", headers=client.headers) as r:
            result["server_info"] = await r.json() if r.status == 200 else {"status": r.status}
        await idle(client, 2)  # warm connections and the server's first-request paths
        if args.idle_trials:
            result["idle"] = await idle(client, args.idle_trials)
            save()
            print("idle", result["idle"], flush=True)
        if args.burst:
            result["burst"] = await burst(client, args.burst)
            save()
            print("burst", result["burst"], flush=True)
        result["throughput"] = []
        for n in args.streams:
            row = await closed_loop(client, n, args.window_s)
            result["throughput"].append(row)
            save()
            print("streams", row, flush=True)
        rate = args.poisson_rate
        if rate is None and args.poisson_load and result["throughput"]:
            best = max(r["audio_s_per_s"] for r in result["throughput"] if not r["rate_503"])
            rate = args.poisson_load * best / (args.audio_ms / 1000)
            result["poisson_capacity_audio_s_per_s"] = best
        if rate:
            result["poisson"] = await poisson(client, rate, args.poisson_s)
            save()
            print("poisson", result["poisson"], flush=True)
        if args.neighbour:
            async with Client(args.url, args.neighbour_key, args.audio_ms, args.sample_rate, 4) as other:
                result["neighbour"] = await neighbour(client, other, args.neighbour, args.neighbour_after_s)
            save()
            print("neighbour", result["neighbour"], flush=True)
    if args.engine_json and Path(args.engine_json).exists():
        engine = json.loads(Path(args.engine_json).read_text())
        result["vs_engine"] = ratios(result, engine)
        if args.merge:
            engine["http"] = {
                "ttfa_ms_p50": (result.get("idle") or {}).get("ttfa_ms_p50"),
                "ttfa_ms_p99": (result.get("idle") or {}).get("ttfa_ms_p99"),
                "burst": result.get("burst"),
                "throughput": [
                    {"streams": r["streams"], "audio_s_per_s": r["audio_s_per_s"]}
                    for r in result["throughput"]
                ],
                "poisson": result.get("poisson"),
                "details": json_path.name,
                **result["vs_engine"],
            }
            Path(args.engine_json).write_text(json.dumps(engine, indent=2) + "\n")
    result["title"] = f"csm-serve over HTTP ({args.name})"
    plot(result, out_dir / f"{args.name}.png")
    result["plot"] = f"{args.name}.png"
    save()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("CSM_SERVE_URL", "http://127.0.0.1:8000"))
    p.add_argument("--api-key", default=os.environ.get("CSM_API_KEY"))
    p.add_argument("--audio-ms", type=int, default=4000, help="max_duration_ms of every request")
    p.add_argument("--sample-rate", type=int, default=24_000)
    p.add_argument("--idle-trials", type=int, default=20)
    p.add_argument("--burst", type=int, default=64, help="arrivals at once (0: skip)")
    p.add_argument(
        "--streams", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 8, 32, 64, 128]
    )
    p.add_argument("--window-s", type=float, default=15.0, help="seconds per closed-loop level")
    p.add_argument("--poisson-rate", type=float, default=None, help="requests per second")
    p.add_argument("--poisson-load", type=float, default=0.8, help="x the best measured capacity (no 503s)")
    p.add_argument("--poisson-s", type=float, default=30.0)
    p.add_argument(
        "--neighbour", type=int, default=0,
        help="streams one key sends at once before another key's one stream (0: skip; needs --neighbour-key)",
    )
    p.add_argument("--neighbour-key", default=os.environ.get("CSM_NEIGHBOUR_API_KEY"), help="the other caller's key")
    p.add_argument("--neighbour-after-s", type=float, default=1.0, help="seconds after the flood it asks")
    p.add_argument("--engine-json", help="the in-process engine results of the same run")
    p.add_argument("--merge", action="store_true", help="write the summary into --engine-json as 'http'")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default=f"{dt.date.today().isoformat()}-http")
    p.add_argument("--notes", default="")
    args = p.parse_args(argv)
    if args.neighbour and not args.neighbour_key:
        p.error("--neighbour needs --neighbour-key: the other caller's key")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args))
    keys = ("ttfa_ms_p50", "ttfa_ms_p99", "audio_s_per_s", "rate_503", "rtf_max", "stall_ms_max")
    print("\nstreams " + " ".join(f"{k:>14}" for k in keys))
    for row in result["throughput"]:
        print(f"{row['streams']:>7} " + " ".join(f"{row.get(k)!s:>14}" for k in keys))
    for row in result["throughput"]:  # where each level's first audio went, p50 ms
        way = ("app", "api", "engine")
        hops = {k.removeprefix("hop_").removesuffix("_ms_p50"): v for k, v in row.items() if k.startswith("hop_") and k.endswith("_p50")}
        print(f"{row['streams']:>7} first audio p50:", {name: row.get(f"{name}_first_audio_ms_p50") for name in way}, hops)
    for phase in ("idle", "burst", "poisson"):
        if phase in result:
            print(
                phase, {k: result[phase].get(k) for k in ("ttfa_ms_p50", "ttfa_ms_p99", "errors", "rate_503")}
            )
    print("client cpu s", result["client_cpu_s"], "json", Path(args.out) / f"{args.name}.json")


if __name__ == "__main__":
    main()
