"""The drain before a stop: the board in `SharedState` and the gate on each ingress replica."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import pytest
from fastapi import FastAPI, WebSocket
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from serve_app.deploy.draining import POLL_S, DrainBoard, DrainGate
from tests.support_tools import serve_http


def test_the_board_knows_requests_in_flight_only_once_every_live_replica_reported_after_the_drain() -> None:
    now = [100.0]
    board = DrainBoard(clock=lambda: now[0])
    assert board.report("a", 3) is False and board.report("b", 1) is False
    assert board.in_flight() is None  # no drain yet
    board.begin()
    assert board.report("a", 2) is True
    assert board.in_flight() is None  # too early: b may not have learnt of it
    now[0] += 3 * POLL_S
    board.report("a", 1)
    board.report("b", 0)
    assert board.in_flight() == 1
    now[0] += POLL_S
    board.report("a", 0)  # b went silent: it died, its last report no longer counts
    now[0] += 2 * POLL_S
    board.report("a", 0)
    assert board.in_flight() == 0
    board.begin()  # a second stop request does not restart the clock
    assert board.in_flight() == 0


def test_the_gate_refuses_new_requests_while_those_in_flight_finish() -> None:
    release = threading.Event()
    draining = threading.Event()
    reported: list[int] = []

    app = FastAPI()

    @app.get("/slow")
    def slow() -> dict[str, bool]:
        return {"released": release.wait(30)}

    async def report(replica_id: str, in_flight: int) -> bool:
        assert replica_id == "replica-1"
        reported.append(in_flight)
        return draining.is_set()

    app.add_middleware(DrainGate, replica_id="replica-1", report=report)
    with serve_http(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        outcome: dict[str, httpx.Response] = {}
        worker = threading.Thread(target=lambda: outcome.setdefault("slow", http.get("/slow")))
        worker.start()
        deadline = time.monotonic() + 10
        while not reported or reported[-1] != 1:  # the gate counts the request in flight
            assert time.monotonic() < deadline, reported
            time.sleep(0.05)
        draining.set()
        time.sleep(2 * POLL_S)  # the next poll learns of the drain
        refused = httpx.get(f"{url}/slow", timeout=10)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.headers["connection"] == "close" and "shutting down" in refused.json()["detail"]
        release.set()
        worker.join(10)
        assert outcome["slow"].status_code == 200 and outcome["slow"].json() == {"released": True}
        time.sleep(2 * POLL_S)
        assert reported[-1] == 0  # the refused request was never counted


def test_the_gate_counts_an_open_websocket_and_refuses_one_opened_during_a_drain() -> None:
    draining, reported = threading.Event(), []
    app = FastAPI()

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        told = websocket.scope["state"]["draining"]  # how an open socket learns of the drain
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.send_text(f"{await websocket.receive_text()} draining={told()}")

    async def report(replica_id: str, in_flight: int) -> bool:
        reported.append(in_flight)
        return draining.is_set()

    app.add_middleware(DrainGate, replica_id="replica-1", report=report)
    client = TestClient(app)
    with client.websocket_connect("/ws") as ws:
        ws.send_text("hi")
        assert ws.receive_text() == "hi draining=False"
        deadline = time.monotonic() + 5
        while not reported or reported[-1] != 1:  # the open socket is in flight
            assert time.monotonic() < deadline, reported
            time.sleep(0.05)
        draining.set()
        time.sleep(2 * POLL_S)
        ws.send_text("still")
        assert ws.receive_text() == "still draining=True"
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/ws"):
            pass
        assert refused.value.code == 1013


def test_a_stop_drains_first_and_a_second_signal_cuts_the_wait_short() -> None:
    import signal

    from serve_app.deploy.runner import DrainingStop

    stop = DrainingStop()
    stop._handle(signal.SIGTERM, None)
    assert stop.requested.is_set() and not stop.forced.is_set()
    stop._handle(signal.SIGINT, None)
    assert stop.forced.is_set()


def test_the_drain_waits_as_long_as_the_longest_graceful_shutdown() -> None:
    import yaml

    from serve_app.deploy.runner import DRAIN_MARGIN_S, default_drain_timeout_s
    from tests.support_ray import ROOT

    production = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    longest = max(d["graceful_shutdown_timeout_s"] for d in production["applications"][0]["deployments"])
    assert default_drain_timeout_s(production, {}) == longest + DRAIN_MARGIN_S
    assert default_drain_timeout_s({"applications": []}, {}) == 20.0 + DRAIN_MARGIN_S  # Ray's default


@pytest.mark.parametrize(
    ("environ", "draining"),
    [
        ({}, 0.0),  # Ray's proxy: a stopping ingress replica goes at once
        ({"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}, 30.0),
        ({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}, 30.0),  # direct ingress comes with it
        ({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}, 0.0),
        ({"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5"}, 5.0),
    ],
)
def test_behind_direct_ingress_the_drain_also_waits_out_rays_draining_period(environ, draining) -> None:
    from serve_app.deploy.runner import DRAIN_MARGIN_S, default_drain_timeout_s

    config = {"applications": [{"deployments": [{"graceful_shutdown_timeout_s": 12}]}]}
    assert default_drain_timeout_s(config, environ) == 12 + draining + DRAIN_MARGIN_S


def test_a_failed_deployment_is_named_for_the_runner_to_exit_on() -> None:
    """`csm-serve serve --config` exits 1 when Ray reports an application DEPLOY_FAILED (Ray itself
    keeps running, and a container would look alive forever)."""
    from types import SimpleNamespace

    from ray.serve.schema import ApplicationStatus

    from serve_app.deploy.runner import failed_apps

    def status(**apps: tuple[ApplicationStatus, str]) -> SimpleNamespace:
        return SimpleNamespace(
            applications={name: SimpleNamespace(status=s, message=m) for name, (s, m) in apps.items()}
        )

    running = status(csm=(ApplicationStatus.RUNNING, ""), other=(ApplicationStatus.DEPLOY_FAILED, "x"))
    assert failed_apps(running, ["csm"]) == {}
    assert failed_apps(status(), ["csm"]) == {}  # not deployed yet
    failed = status(csm=(ApplicationStatus.DEPLOY_FAILED, "auth_required is set but no API keys"))
    assert failed_apps(failed, ["csm"]) == {"csm": "auth_required is set but no API keys"}
