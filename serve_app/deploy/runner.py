"""`csm-serve serve --config`: `serve run CONFIG`, but a stop drains instead of cutting.

Ray's `serve run` stops its HTTP proxies at once on Ctrl-C, cutting every open stream, and on
SIGTERM it dies through Ray's native failure handler (a stack trace, exit status 15). Here SIGTERM
(a container stop) and SIGINT (Ctrl-C) drain instead, up to a timeout:

1. the ingress replicas are told to drain (`serve_app.deploy.draining`): new requests get 503 +
   Retry-After, those in flight go on, until none is left;
2. the applications are deleted while the proxies stay up: each replica finishes what it still
   serves (Ray waits up to the deployment's `graceful_shutdown_timeout_s`);
3. Serve and Ray shut down.

A second signal skips what is left of the wait. The exit status is 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import yaml

from serve_app.deploy.ingress import direct_ingress_draining_s

__all__ = ["DrainingStop", "default_drain_timeout_s", "run_config"]

logger = logging.getLogger("serve_app.runner")

DRAIN_MARGIN_S = 10.0
"""Beyond the longest graceful_shutdown_timeout_s: time for Ray to stop replicas and report it."""


def default_drain_timeout_s(config: dict[str, Any], environ: Mapping[str, str] = os.environ) -> float:
    """How long a stop may wait: the config's longest graceful shutdown (requests in flight
    finishing), then the ingress replicas' direct-ingress draining period (deleting the app)."""
    longest = max(
        (
            float(deployment.get("graceful_shutdown_timeout_s", 20.0))  # Ray's default
            for app in config.get("applications", [])
            for deployment in app.get("deployments", [])
        ),
        default=20.0,
    )
    return longest + direct_ingress_draining_s(environ) + DRAIN_MARGIN_S


class DrainingStop:
    """SIGTERM/SIGINT handlers: the first asks for a drain, the second for an immediate stop."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.forced = threading.Event()

    def install(self) -> None:
        """(Re)install the handlers; Python's replace whatever was there, Ray's native one included."""
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested.is_set():
            logger.warning("second %s: stopping without waiting", signal.Signals(signum).name)
            self.forced.set()
            return
        logger.info("%s: draining in-flight requests, then stopping", signal.Signals(signum).name)
        self.requested.set()


STATUS_CHECK_S = 5.0
"""How often a running `serve --config` asks Ray whether its applications failed to deploy."""


def failed_apps(status: Any, names: list[str]) -> dict[str, str]:
    """The applications of `names` that Ray reports DEPLOY_FAILED, with Ray's message."""
    failed = {}
    for name in names:
        app = status.applications.get(name)
        if app is not None and str(getattr(app.status, "value", app.status)) == "DEPLOY_FAILED":
            failed[name] = app.message
    return failed


def run_config(config_path: str | Path, drain_timeout_s: float | None = None) -> int:
    """Serve `config_path` until SIGTERM or SIGINT, then drain and stop; returns the exit status."""
    import ray
    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(Path(config_path).read_text())
    schema = ServeDeploySchema.model_validate(raw)
    timeout_s = default_drain_timeout_s(raw) if drain_timeout_s is None else drain_timeout_s
    stop = DrainingStop()
    stop.install()  # a signal during start-up drains (or stops) too
    ray.init(address=os.environ.get("RAY_ADDRESS"), namespace=SERVE_NAMESPACE)
    stop.install()  # ray.init replaced them: Ray's SIGTERM handler exits at once, its native one prints a trace
    # Handles are used on one event loop that runs, on a thread of its own, until Serve is shut
    # down: with RAY_SERVE_THROUGHPUT_OPTIMIZED a handle's router runs on its caller's loop (whose
    # long-poll client stops for good if that loop stops running), and shutting Serve down closes
    # those routers there.
    loop = asyncio.new_event_loop()
    handles = threading.Thread(target=loop.run_forever, name="csm-serve-handles", daemon=True)
    handles.start()

    def on_handles_loop(coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    try:
        client = serve_start(
            http_options=schema.http_options.model_dump(),
            proxy_location=schema.proxy_location,
            grpc_options=schema.grpc_options.model_dump(),
            controller_options=schema.controller_options,
        )
        client.deploy_apps(schema, _blocking=False)
        logger.info("deployed %s; SIGTERM or Ctrl-C drains and stops", config_path)
        names = [app.name for app in schema.applications]
        checked = time.monotonic()
        while not stop.requested.wait(1.0):
            if time.monotonic() - checked >= STATUS_CHECK_S:
                checked = time.monotonic()
                if failed := failed_apps(serve.status(), names):
                    # Exit, so a container's restart policy or a supervisor sees it (Ray keeps going).
                    for name, message in failed.items():
                        logger.error("application %s failed to deploy: %s", name, message)
                    return 1
        deadline = time.monotonic() + timeout_s
        for name in names:
            on_handles_loop(drain_ingress(name, deadline, stop.forced.is_set))
        drained = drain(client, names, max(0.0, deadline - time.monotonic()), stop.forced.is_set, serve.status)
        logger.info("%s; shutting down Serve", "drained" if drained else "drain incomplete")
    finally:
        on_handles_loop(serve.shutdown_async())
        loop.call_soon_threadsafe(loop.stop)
        handles.join(10)
        if not handles.is_alive():
            loop.close()
        ray.shutdown()
    return 0


async def drain_ingress(app_name: str, deadline: float, forced: Callable[[], bool]) -> bool:
    """Have the app's ingress replicas refuse new requests, and wait (until `deadline`) for those in
    flight to finish. True once none is left; False for an app without `SharedState`, or on time-out."""
    from ray import serve

    from serve_app.deploy.handle_engine import awaited
    from serve_app.deploy.names import STATE_DEPLOYMENT

    try:
        board = serve.get_deployment_handle(STATE_DEPLOYMENT, app_name=app_name)
        await asyncio.wait_for(awaited(board.begin_drain.remote()), 10)
    except Exception as exc:  # noqa: BLE001 - not our graph, or its state replica is down: skip this step
        logger.info("%s: no drain board (%s: %s); deleting it directly", app_name, type(exc).__name__, exc)
        return False
    while time.monotonic() < deadline and not forced():
        in_flight = await asyncio.wait_for(awaited(board.in_flight.remote()), 10)
        if in_flight == 0:
            return True
        await asyncio.sleep(0.2)
    return False


def drain(
    client: Any,
    names: list[str],
    timeout_s: float,
    forced: Callable[[], bool],
    status: Callable[[], Any],
) -> bool:
    """Delete the applications (replicas finish what they serve; proxies stay up) and wait until
    they are gone, at most `timeout_s` or until `forced()`. True if they all went in time."""
    client.delete_apps(names, blocking=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not forced():
        applications = status().applications
        if all(_gone(applications.get(name)) for name in names):
            return True
        time.sleep(0.2)
    return False


def _gone(app_status: Any) -> bool:
    return app_status is None or app_status.status == "NOT_STARTED"
