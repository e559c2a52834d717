"""Several replicas and their failures, over real HTTP against the Ray Serve app (tests/support_ray.py).

- Two ingress replicas share one session store and one rate limit, and lose nothing when one dies.
- Load drives `TTSModel` from one replica to two, as its autoscaling config says, and back.
- A `TTSModel` replica killed under load: in-flight requests end at once with 503 (a stream already
  under way is cut), and the service recovers when Ray has replaced the replica.

The tests share one changed deployment of the local config (two ingress replicas, API keys and a
rate limit, autoscaling `TTSModel`), deployed once for this module; the session's config is restored
after it. Figures are printed (`pytest -s`): the README's reliability table quotes them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serve_app.deployments import INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT, STATE_DEPLOYMENT
from tests.support_ray import APP_NAME, ServeInstance, deployment_config

pytestmark = pytest.mark.ray

TIMEOUT = httpx.Timeout(60.0)
SESSION_KEY, LIMIT_KEY, LOAD_KEY = "session-key-0123456789", "limit-key-0123456789", "load-key-0123456789"
BURST = 100
FAST_SCALING = {"upscale_delay_s": 1, "downscale_delay_s": 3, "look_back_period_s": 2, "metrics_interval_s": 0.5}
"""The local config's autoscaling delays, scaled down (its replica counts and target stay)."""


@pytest.fixture(scope="module")
def scaled(ray_serve: ServeInstance) -> Iterator[ServeInstance]:
    """Settings reach the ingress and state replicas through their environment (as CSM_API_KEYS does
    in production) and autoscaling delays change in place, so the model replica is not restarted."""
    config = ray_serve.changed_config(INGRESS_DEPLOYMENT, num_replicas=2)
    env = {
        "CSM_SESSION_CONTEXT_TURNS": "64",  # every turn stays in the context: its count shows none was lost
        "CSM_API_KEYS": f"{SESSION_KEY},{LIMIT_KEY},{LOAD_KEY}",
        "CSM_RATE_LIMIT_PER_MINUTE": "6",
        "CSM_RATE_LIMIT_BURST": str(BURST),
    }
    for name in (INGRESS_DEPLOYMENT, STATE_DEPLOYMENT):
        deployment_config(config, name)["ray_actor_options"]["runtime_env"] = {"env_vars": env}
    deployment_config(config, MODEL_DEPLOYMENT)["autoscaling_config"].update(FAST_SCALING)
    model_pid = ray_serve.model_info()["replica"]["pid"]
    with ray_serve.deployed(config):
        assert ray_serve.model_info()["replica"]["pid"] == model_pid
        yield ray_serve


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _engine_processes() -> list[int]:
    """Pids of the running engine processes (`ProcessEngine`'s children) whose parent is a model
    replica of this application, or that lost their parent (an orphan would hold the GPU)."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if b"serve_app.engine.process import child_main" not in cmdline.read() or not _alive(int(entry)):
                    continue
            with open(f"/proc/{entry}/stat") as stat:
                parent = stat.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{parent}/cmdline", "rb") as cmdline:
                parent_cmdline = cmdline.read()
        except OSError:
            continue
        if MODEL_DEPLOYMENT.encode() in parent_cmdline or not parent_cmdline.startswith(b"ray::"):
            pids.append(int(entry))
    return pids


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _kill_ingress_replica(replica_id: str) -> None:
    import ray

    actor = ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#{INGRESS_DEPLOYMENT}#{replica_id}", namespace="serve")
    ray.kill(actor, no_restart=True)


def _turn(http: httpx.Client, session_id: str, deadline_s: float = 30.0) -> httpx.Response:
    """One /contextual_speak turn; a request routed to a replica that just died is sent again."""
    body = {"text": "And then?", "speaker": 0, "session_id": session_id, "max_duration_ms": 160}
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            response = http.post("/contextual_speak", json=body, headers=_bearer(SESSION_KEY))
            if response.status_code == 200 or time.monotonic() > deadline:
                return response
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def test_two_ingress_replicas_share_sessions_and_rate_limits(scaled: ServeInstance) -> None:
    with httpx.Client(base_url=scaled.base_url, timeout=TIMEOUT) as http:
        assert scaled.running_replicas(INGRESS_DEPLOYMENT) == 2

        # One session, turns served by whichever replica the proxy picks, until both served some.
        served_by: list[str] = []
        while len(set(served_by)) < 2 or len(served_by) < 6:
            assert len(served_by) < 20, f"the proxy never used both replicas: {served_by}"
            response = _turn(http, "shared")
            assert response.status_code == 200, response.text
            served_by.append(response.headers["x-served-by"])
            assert response.headers["x-session-turns"] == str(len(served_by)), served_by
        switches = sum(a != b for a, b in itertools.pairwise(served_by))
        print(f"\nsession: {len(served_by)} turns over 2 ingress replicas, {switches} switches, context kept")

        # One token bucket per key for the whole service: the burst, not twice the burst.
        start = time.monotonic()
        answers = [http.get("/v1/models", headers=_bearer(LIMIT_KEY)) for _ in range(2 * BURST + 10)]
        elapsed = time.monotonic() - start
        by_status = Counter(r.status_code for r in answers)
        assert set(by_status) == {200, 429}, by_status
        refilled = int(elapsed * 6 / 60) + 1
        assert BURST <= by_status[200] <= BURST + refilled, (by_status, elapsed)
        assert answers[0].status_code == 200 and answers[-1].status_code == 429
        replicas = {status: {r.headers["x-served-by"] for r in answers if r.status_code == status}
                    for status in (200, 429)}
        assert len(replicas[200]) == 2 and len(replicas[429]) == 2, replicas  # both allowed, both refused
        print(f"rate limit: {by_status[200]} of {len(answers)} allowed across 2 replicas (burst {BURST})")

        # An ingress replica dies: the session lives in SharedState, not in the replica.
        _kill_ingress_replica(served_by[-1])
        for _ in range(4):
            response = _turn(http, "shared")
            assert response.status_code == 200, response.text
            served_by.append(response.headers["x-served-by"])
            assert response.headers["x-session-turns"] == str(len(served_by))


def test_load_scales_the_model_to_two_replicas_and_back(scaled: ServeInstance) -> None:
    scaling = deployment_config(scaled.config, MODEL_DEPLOYMENT)["autoscaling_config"]
    body = {"text": "Keep the engine busy for a while.", "max_duration_ms": 4000}

    async def load(stop: asyncio.Event, outcomes: list[Any]) -> None:
        headers = _bearer(LOAD_KEY)  # its own budget: the load stays well within the burst
        async with httpx.AsyncClient(base_url=scaled.base_url, timeout=TIMEOUT, headers=headers) as client:

            async def worker() -> None:
                while not stop.is_set():
                    try:
                        response = await client.post("/speak", json=body)
                        outcomes.append((response.status_code, len(response.content)))
                    except httpx.HTTPError as exc:
                        outcomes.append((type(exc).__name__, 0))

            await asyncio.gather(*(worker() for _ in range(8)))

    async def scenario() -> dict[str, float]:
        stop, outcomes = asyncio.Event(), []
        started = time.monotonic()
        loader = asyncio.ensure_future(load(stop, outcomes))
        await asyncio.sleep(1.0)
        # The model's queue is long now; a readiness probe still finds the service healthy, at once
        # (it waited its turn behind the speech and answered 503 after 10 s).
        async with httpx.AsyncClient(base_url=scaled.base_url, timeout=TIMEOUT) as probe:
            for _ in range(3):
                began = time.monotonic()
                health = await probe.get("/health")
                assert health.status_code == 200 and time.monotonic() - began < 5, health.text
        decided = None
        while True:
            assert time.monotonic() - started < 120, "load did not add a replica"
            assert not loader.done(), loader
            status = await asyncio.to_thread(scaled.deployment_status, MODEL_DEPLOYMENT)
            if decided is None and status.status == "UPSCALING":
                decided = time.monotonic() - started
            if status.replica_states.get("RUNNING", 0) >= scaling["max_replicas"]:
                break
            await asyncio.sleep(0.25)
        scaled_up = time.monotonic() - started
        served_before = len(outcomes)
        while len(outcomes) < served_before + 8:  # keep the load on while both replicas serve
            await asyncio.sleep(0.1)
        stop.set()
        await loader
        assert len(outcomes) >= 8
        statuses = Counter(status for status, _ in outcomes)
        assert statuses == {200: len(outcomes)}, statuses  # nothing failed during the scale-up
        assert all(size > 44 for _, size in outcomes)
        assert await asyncio.to_thread(scaled.running_replicas, MODEL_DEPLOYMENT) <= scaling["max_replicas"]

        idle = time.monotonic()
        while await asyncio.to_thread(scaled.running_replicas, MODEL_DEPLOYMENT) > scaling["min_replicas"]:
            assert time.monotonic() - idle < 60, "the deployment did not scale back down"
            await asyncio.sleep(0.25)
        return {"decided_s": decided or scaled_up, "up_s": scaled_up, "down_s": time.monotonic() - idle,
                "requests": len(outcomes)}

    assert scaled.running_replicas(MODEL_DEPLOYMENT) == scaling["min_replicas"]
    figures = asyncio.run(scenario())
    # The replica scaled away took its engine process with it: one engine process per running replica.
    deadline = time.monotonic() + 30
    while len(_engine_processes()) != scaling["min_replicas"]:
        assert time.monotonic() < deadline, _engine_processes()
        time.sleep(0.25)
    print(
        f"\nautoscaling: upscale decided {figures['decided_s']:.1f} s into the load, 2 replicas running at "
        f"{figures['up_s']:.1f} s, {figures['requests']:.0f} requests all 200, back to 1 replica "
        f"{figures['down_s']:.1f} s after the load"
    )


def test_killed_model_replica_fails_fast_and_is_replaced(scaled: ServeInstance) -> None:
    deadline = time.monotonic() + 60
    while scaled.running_replicas(MODEL_DEPLOYMENT) != 1:  # one replica: the kill takes all capacity
        assert time.monotonic() < deadline
        time.sleep(0.25)
    old_info = scaled.model_info()
    old_pid, old_engine_pid = old_info["replica"]["pid"], old_info["engine_process"]["pid"]
    whole = {"text": "This one is interrupted.", "max_duration_ms": 20_000}
    streamed = {**whole, "stream": True, "response_format": "pcm"}

    async def read_stream(client: httpx.AsyncClient, started: asyncio.Event) -> tuple[Any, int]:
        received = 0
        try:
            async with client.stream("POST", "/speak", json=streamed) as response:
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    started.set()
                return response, received
        except httpx.TransportError as exc:
            return exc, received

    async def scenario() -> tuple[float, list[Any], tuple[Any, int], list[int]]:
        headers = _bearer(SESSION_KEY)
        async with httpx.AsyncClient(base_url=scaled.base_url, timeout=TIMEOUT, headers=headers) as client:
            streaming = asyncio.Event()
            stream = asyncio.ensure_future(read_stream(client, streaming))
            await asyncio.wait_for(streaming.wait(), 15)  # audio is flowing to the client
            wholes = [asyncio.ensure_future(client.post("/speak", json=whole)) for _ in range(3)]
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # kill only once all four are inside the replica
                info = await asyncio.to_thread(scaled.model_info)
                if info["running"] + info["waiting"] >= 4:
                    break
                await asyncio.sleep(0.05)
            killed = time.monotonic()
            os.kill(old_pid, signal.SIGKILL)
            results = await asyncio.gather(*wholes, return_exceptions=True)
            cut = await stream
            ended = time.monotonic() - killed
            # New requests until one succeeds: each answer meanwhile must be a clean 503.
            meanwhile: list[int] = []
            while True:
                response = await client.post("/speak", json={"text": "Back again?", "max_duration_ms": 400})
                if response.status_code == 200:
                    break
                meanwhile.append(response.status_code)
                assert time.monotonic() - killed < 120, meanwhile
                await asyncio.sleep(0.25)
            recovered = time.monotonic() - killed
            return ended, [recovered, *results], cut, meanwhile

    ended, (recovered, *results), (stream_end, stream_bytes), meanwhile = asyncio.run(scenario())
    assert ended < 10, "in-flight requests hung after the replica died"
    for result in results:
        assert isinstance(result, httpx.Response) and result.status_code == 503, result
        assert int(result.headers["retry-after"]) >= 1
        assert "unavailable" in result.json()["detail"]
    # The stream had sent its 200 and some audio: it is cut (no final chunk), never a clean end.
    assert isinstance(stream_end, httpx.RemoteProtocolError), stream_end
    assert 0 < stream_bytes < 20 * 24_000 * 2
    assert set(meanwhile) <= {503}, meanwhile
    assert scaled.model_info()["replica"]["pid"] != old_pid
    assert scaled.running_replicas(MODEL_DEPLOYMENT) == 1
    # The dead replica's engine process saw its socket close and exited: nothing holds the GPU.
    deadline = time.monotonic() + 30
    while _alive(old_engine_pid):
        assert time.monotonic() < deadline, "the killed replica's engine process lives on"
        time.sleep(0.25)
    print(
        f"\nreplica kill: in-flight requests ended {ended:.2f} s after the kill (503, stream cut); "
        f"first 200 again after {recovered:.1f} s ({len(meanwhile)} requests answered 503 meanwhile)"
    )

