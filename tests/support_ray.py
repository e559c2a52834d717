"""One real Ray Serve instance per test session, serving `configs/serve/local.yaml` over HTTP.

Ray starts in-process (`address="local"`, 2 CPUs, no dashboard, small object store) and the local
config is deployed through the same controller call `serve run configs/serve/local.yaml` makes, so
its `deployments:` overrides (num_gpus: 0, queue limits, ...) apply exactly. Only the HTTP port is
changed, to a free one, so a developer's `make serve` on :8000 does not collide with the tests.

`tests/conftest.py` registers the `ray_serve` fixture for every module: take it as an argument (do
not import it into a test module, which would make a second fixture and a second Ray), and mark
Ray tests `@pytest.mark.ray`. Starting Ray costs seconds: keep Ray tests few,
in as few files as possible, all on this one fixture.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CONFIG = ROOT / "configs" / "serve" / "local.yaml"
APP_NAME = "csm"
DEPLOY_TIMEOUT_S = 180.0


PORT_RANGE = (20_000, 32_000)
"""Where test servers take their ports: above Ray's worker ports (10002-19999) and below the
kernel's ephemeral range (32768-60999), from which every socket bound to port 0 (Ray's gRPC
servers, HAProxy's peers, clients) draws. A port taken from the ephemeral range and released could
be handed to one of those before the test server binds it ("Address already in use")."""


def free_port() -> int:
    """A port nobody listens on now, outside Ray's and the kernel's automatic ranges."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


def local_config(port: int, voices_dir: Path) -> dict[str, Any]:
    """`configs/serve/local.yaml` with a free HTTP port and saved voices in a temporary directory."""
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    config["http_options"]["port"] = port
    (app,) = config["applications"]
    app["args"].setdefault("api", {})["voices_dir"] = str(voices_dir)
    return config


def worker_env(tmp_dir: str) -> dict[str, str]:
    """Environment for Ray (and its workers, which inherit it): no auth, no telemetry, the repo
    importable without `pip install -e .`, Ray's files in `tmp_dir`."""
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": python_path,
        "RAY_TMPDIR": tmp_dir,
        "HF_HUB_OFFLINE": "1",
    }


@dataclass
class ServeInstance:
    """The running application: its URL and the config it was deployed with."""

    base_url: str
    config: dict[str, Any]
    client: Any = field(repr=False)

    def deploy(self, config: dict[str, Any], timeout_s: float = DEPLOY_TIMEOUT_S) -> None:
        """Apply a (changed) config like `serve deploy` and wait until the app is RUNNING."""
        from ray.serve.schema import ServeDeploySchema

        self.client.deploy_apps(ServeDeploySchema.model_validate(config))
        wait_running(timeout_s)
        self.config = config

    @contextlib.contextmanager
    def deployed(self, config: dict[str, Any]) -> Iterator[None]:
        """Serve a changed config (e.g. more replicas, autoscaling) for a while, then the original."""
        original = copy.deepcopy(self.config)
        self.deploy(config)
        try:
            yield
        finally:
            self.deploy(original)
            self.wait_healthy()

    def changed_config(self, deployment: str | None = None, **options: Any) -> dict[str, Any]:
        """A copy of the current config, with `options` merged into one deployment's entry."""
        changed = copy.deepcopy(self.config)
        if deployment is not None:
            deployment_config(changed, deployment).update(options)
        return changed

    @contextlib.contextmanager
    def deployment_options(self, deployment: str, **options: Any) -> Iterator[None]:
        """Temporarily override one deployment's options (e.g. queue limits), then restore."""
        with self.deployed(self.changed_config(deployment, **options)):
            yield

    def running_replicas(self, deployment: str) -> int:
        """How many replicas of `deployment` are RUNNING now, as Serve's status reports."""
        return self.deployment_status(deployment).replica_states.get("RUNNING", 0)

    def deployment_status(self, deployment: str) -> Any:
        """Serve's `DeploymentStatusOverview` of `deployment` (status, replica states)."""
        from ray import serve

        return serve.status().applications[APP_NAME].deployments[deployment]

    def model_info(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """`TTSModel.info()` straight from a replica (includes the replica's pid)."""
        from ray import serve

        from serve_app.deployments import MODEL_DEPLOYMENT

        handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=APP_NAME)
        return handle.info.remote().result(timeout_s=timeout_s)

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """Wait for `GET /health` to answer 200 (the model replica's engine is serving)."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                last = httpx.get(f"{self.base_url}/health", timeout=5)
                if last.status_code == 200:
                    return
            time.sleep(0.25)
        raise TimeoutError(f"/health not 200 after {timeout_s} s: {last and last.text}")


def deployment_config(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The `deployments:` entry called `name` in a config's only application."""
    (app,) = config["applications"]
    return next(d for d in app["deployments"] if d["name"] == name)


def wait_running(timeout_s: float = DEPLOY_TIMEOUT_S) -> None:
    """Block until the app is RUNNING; fail at once with Ray's message if the deploy failed."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP_NAME)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"{APP_NAME} {status.status}: {status.message}")
        time.sleep(0.25)
    raise TimeoutError(f"{APP_NAME} not RUNNING after {timeout_s} s: {status}")


_RUNNING: list[ServeInstance] = []
"""The session's instance: each module importing the fixture gets its own fixture definition, and
all of them share this one instance (the first to start it stops it)."""


@pytest.fixture(scope="session")
def ray_serve() -> Iterator[ServeInstance]:
    """The local config served by in-process Ray for the whole session; torn down at the end."""
    if _RUNNING:
        yield _RUNNING[0]
        return
    import ray
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    tmp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are length-capped
    atexit.register(shutil.rmtree, tmp_dir, True)  # again at exit: Ray's exiting processes write late
    saved_env = {key: os.environ.get(key) for key in worker_env(tmp_dir)}
    os.environ.update(worker_env(tmp_dir))
    port = free_port()
    config = local_config(port, Path(tmp_dir) / "voices")
    schema = ServeDeploySchema.model_validate(config)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=150_000_000,
        _temp_dir=tmp_dir,
        log_to_driver=False,
    )
    try:
        # What `serve run <config>` does: start Serve with the config's HTTP options, then
        # hand the whole config to the controller.
        client = serve_start(
            http_options=schema.http_options.model_dump(),
            proxy_location=schema.proxy_location,
        )
        instance = ServeInstance(base_url=f"http://127.0.0.1:{port}", config=config, client=client)
        instance.deploy(config)
        instance.wait_healthy()
        _RUNNING.append(instance)
        yield instance
    finally:
        _RUNNING.clear()
        from ray import serve

        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmp_dir, ignore_errors=True)
