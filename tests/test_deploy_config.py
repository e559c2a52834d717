"""Serve configs, KubeRay manifest and Dockerfile: validated without starting Ray."""

from __future__ import annotations

import fnmatch
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from pydantic import ValidationError
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from serve_app import deployments
from serve_app.deploy.args import BuildArgs

ROOT = Path(__file__).resolve().parents[1]
PROD = ROOT / "serve_config.yaml"
LOCAL = ROOT / "configs/serve/local.yaml"
KUBERAY = ROOT / "configs/kuberay/rayservice.yaml"
REPLICA_READY_S = 60.0
"""The time a new model replica may take to become ready (the service's target): what a draining
node waits for before its replicas stop."""


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _app(config: dict[str, Any]) -> dict[str, Any]:
    (app,) = config["applications"]
    return app


def _deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in _app(config)["deployments"] if d["name"] == name)


@pytest.mark.parametrize("path", [PROD, LOCAL], ids=["production", "local"])
def test_config_validates_and_builds(path: Path) -> None:
    config = _load(path)
    schema = ServeDeploySchema.model_validate(config)
    app = schema.applications[0]
    module_name, attr = app.import_path.split(":")
    builder = getattr(importlib.import_module(module_name), attr)
    assert builder is deployments.build_app
    assert isinstance(builder(app.args), Application)
    # Every `deployments:` entry must name a deployment of the graph, or Ray rejects the config.
    graph = {deployments.TTSModel.name, deployments.APIIngress.name, deployments.SharedState.name}
    assert {d.name for d in app.deployments} == graph


@pytest.mark.parametrize("path", [PROD, LOCAL], ids=["production", "local"])
def test_shared_state_has_exactly_one_replica_that_never_autoscales(path: Path) -> None:
    """Two replicas would each hold half of the sessions and buckets."""
    state = _deployment(_load(path), deployments.STATE_DEPLOYMENT)
    assert state["num_replicas"] == 1
    assert "autoscaling_config" not in state
    assert state["ray_actor_options"]["num_gpus"] == 0
    ingress = _deployment(_load(path), deployments.INGRESS_DEPLOYMENT)
    # Every API request takes a token there (with rate limits on): it must not be the bottleneck.
    assert state["max_ongoing_requests"] >= ingress["max_ongoing_requests"]


@pytest.mark.parametrize("path", [PROD, LOCAL], ids=["production", "local"])
def test_model_deployment_passes_engine_slots_through(path: Path) -> None:
    config = _load(path)
    args = BuildArgs.model_validate(_app(config)["args"])
    model = _deployment(config, deployments.MODEL_DEPLOYMENT)
    assert args.max_batch_size is not None
    # The engine batches itself: Ray must let at least a full batch reach one replica at once.
    assert model["max_ongoing_requests"] >= args.max_batch_size
    # A bounded queue is what turns overload into 503 instead of unbounded waiting.
    assert model["max_queued_requests"] > 0
    assert model["backpressure_config"]["retry_after_s"] > 0
    assert model["health_check_timeout_s"] >= model["health_check_period_s"] > 0
    assert model["graceful_shutdown_timeout_s"] > 0


def test_production_config_shape() -> None:
    config = _load(PROD)
    app = _app(config)
    assert app["args"]["model"] == "csm-1b"
    model = _deployment(config, deployments.MODEL_DEPLOYMENT)
    assert model["ray_actor_options"]["num_gpus"] == 1
    scaling = model["autoscaling_config"]
    assert "num_replicas" not in model  # Ray rejects num_replicas together with autoscaling
    assert 1 <= scaling["min_replicas"] <= scaling["initial_replicas"] <= scaling["max_replicas"]
    assert scaling["max_replicas"] > scaling["min_replicas"]
    assert 0 < scaling["target_ongoing_requests"] < model["max_ongoing_requests"]
    ingress = _deployment(config, deployments.INGRESS_DEPLOYMENT)
    assert ingress["ray_actor_options"]["num_gpus"] == 0
    assert ingress["num_replicas"] >= 2
    assert ingress["max_ongoing_requests"] >= model["max_ongoing_requests"]


def test_local_config_runs_without_gpu_or_weights() -> None:
    config = _load(LOCAL)
    assert config["http_options"]["host"] == "127.0.0.1"
    assert config["http_options"]["port"] == 8000
    app = _app(config)
    assert app["route_prefix"] == "/"
    assert app["args"]["model"] == "tiny-random"
    assert app["args"]["device"] == "cpu"
    for deployment in app["deployments"]:
        # num_gpus > 0 on a machine without a GPU leaves the replica pending forever.
        assert deployment["ray_actor_options"]["num_gpus"] == 0, deployment["name"]
    # Every replica it may run fits on a two-core machine, the model's at its autoscaling maximum.
    replicas = {d["name"]: d.get("autoscaling_config", {}).get("max_replicas", d.get("num_replicas", 1))
                for d in app["deployments"]}
    assert sum(d["ray_actor_options"]["num_cpus"] * replicas[d["name"]] for d in app["deployments"]) <= 2
    scaling = _deployment(config, deployments.MODEL_DEPLOYMENT)["autoscaling_config"]
    assert scaling["min_replicas"] == 1 < scaling["max_replicas"]


def test_build_args_reject_typos_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="modle"):
        deployments.build_app({"modle": "csm-1b"})
    with pytest.raises(ValidationError, match="max_batch_size"):
        deployments.build_app({"max_batch_size": 0})
    # `serve run ... max_batch_size=8` passes strings: they are coerced.
    # A misspelt api setting would be ignored: `auth_requird: true` left the API open.
    with pytest.raises(ValidationError, match="auth_requird.*did you mean 'auth_required'"):
        deployments.build_app({"api": {"auth_requird": True}})
    args = BuildArgs.model_validate({"model": "tiny-random", "max_batch_size": "8", "device": "cpu"})
    assert args.engine_kwargs() == {"max_batch_size": 8, "device": "cpu"}
    assert args.model_max_ongoing_requests() == 10


def test_build_args_check_engine_options_by_name_and_type() -> None:
    with pytest.raises(ValidationError, match="fused_linear_max_bath.*did you mean 'fused_linear_max_batch'"):
        deployments.build_app({"engine": {"fused_linear_max_bath": 128}})
    with pytest.raises(ValidationError, match="'chunk_frames'.*integer"):
        deployments.build_app({"engine": {"chunk_frames": "many"}})
    with pytest.raises(ValidationError, match="'dtype'.*string"):
        deployments.build_app({"engine": {"dtype": 16}})
    with pytest.raises(ValidationError, match="'prefill_attention'.*'sdpa' or 'kernel'"):
        deployments.build_app({"engine": {"prefill_attention": "flash"}})
    # the slots (and the device) are the application's own fields, which would silently win
    for name, value in (("max_batch_size", 256), ("device", "cpu")):
        with pytest.raises(ValidationError, match=f"set '{name}' at the top of the application's args"):
            deployments.build_app({"max_batch_size": 128, "engine": {name: value}})
    engine = {"prefill_attention": "kernel", "prefill_in_step": "true"}  # as `serve run` passes them
    assert BuildArgs.model_validate({"engine": engine}).engine_kwargs() == {
        "prefill_attention": "kernel",
        "prefill_in_step": True,
    }
    args = BuildArgs.model_validate({"engine": {"chunk_frames": "4", "compile": False, "dtype": "bfloat16"}})
    assert args.engine_kwargs() == {"chunk_frames": 4, "compile": False, "dtype": "bfloat16"}


def test_engine_options_are_what_the_engine_and_the_loader_take() -> None:
    import inspect
    from dataclasses import fields

    from serve_app.engine.config import EngineConfig, LoadOptions
    from serve_app.model.loading import load_model

    assert {f.name for f in fields(LoadOptions)} <= set(inspect.signature(load_model).parameters)
    config, rest = EngineConfig.split({"chunk_frames": 4, "dtype": "float32"})
    assert config.chunk_frames == 4 and rest == {"dtype": "float32"}


def test_rayservice_matches_serve_config() -> None:
    all_docs = list(yaml.safe_load_all(KUBERAY.read_text()))
    docs = {doc["kind"]: doc for doc in all_docs}
    claims = {d["metadata"]["name"]: d for d in all_docs if d["kind"] == "PersistentVolumeClaim"}
    manifest = docs["RayService"]
    assert manifest["apiVersion"] == "ray.io/v1"
    spec = manifest["spec"]
    assert yaml.safe_load(spec["serveConfigV2"]) == _load(PROD)

    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__  # image and cluster must run the same Ray
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert any(p["containerPort"] == 8000 for p in head["ports"])
    (gpu_group,) = [
        g
        for g in cluster["workerGroupSpecs"]
        if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu") == "1"
    ]
    assert gpu_group["minReplicas"] <= gpu_group["replicas"] <= gpu_group["maxReplicas"]
    scaling = _deployment(_load(PROD), deployments.MODEL_DEPLOYMENT)["autoscaling_config"]
    assert gpu_group["maxReplicas"] >= scaling["max_replicas"], "GPU workers cap the model replicas"
    assert cluster["enableInTreeAutoscaling"] is True
    images = {
        c["image"]
        for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for c in g["template"]["spec"]["containers"]
    }
    assert len(images) == 1

    # Saved voices: every pod that can host an ingress replica mounts one shared (RWX) claim at
    # the serve config's voices_dir, writable by the image's non-root user.
    assert all(c["spec"]["accessModes"] == ["ReadWriteMany"] for c in claims.values())
    voices_dir = _app(_load(PROD))["args"]["api"]["voices_dir"]
    pod = gpu_group["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}

    def claim_at(path: str) -> str:
        """The claim mounted at `path` or at a folder above it, in the GPU worker's container."""
        mounts = [m for m in pod["containers"][0]["volumeMounts"] if Path(path).is_relative_to(m["mountPath"])]
        (mount,) = mounts
        return volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]

    assert claim_at(voices_dir) == "csm-voices" in claims
    # Triton's kernel cache: on a claim every GPU worker shares, so a new pod skips the compiling.
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert claim_at(env["TRITON_CACHE_DIR"]) == "csm-kernel-cache" in claims
    assert pod["securityContext"]["fsGroup"] == 1000
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "no ingress on the head"
    # The smallest deployment (every replica on the one GPU worker, the head takes none) fits that
    # worker's CPUs, or a replica waits for a second GPU pod that it then keeps from scaling down.
    worker_cpus = float(pod["containers"][0]["resources"]["limits"]["cpu"])
    smallest = sum(
        d["ray_actor_options"]["num_cpus"] * d.get("autoscaling_config", {}).get("min_replicas", d.get("num_replicas", 1))
        for d in _app(_load(PROD))["deployments"]
    )
    assert smallest <= worker_cpus, (smallest, worker_cpus)

    # A deleted GPU pod drains (Ray's SIGTERM drain) long enough for a replacement replica to start
    # and for its replicas' streams to finish, and Kubernetes waits out that drain before its SIGKILL.
    drain_s = float(env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"])
    longest = max(d.get("graceful_shutdown_timeout_s", 20.0) for d in _app(_load(PROD))["deployments"])
    assert drain_s >= longest + REPLICA_READY_S
    assert pod["terminationGracePeriodSeconds"] > drain_s


def _dockerignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    return any(
        fnmatch.fnmatch(path, p)
        or fnmatch.fnmatch(parts[0], p)
        or fnmatch.fnmatch(path, p.removeprefix("**/"))
        for p in patterns
    )


def test_dockerfile_copies_what_the_image_needs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        src
        for line in re.findall(r"^COPY (?:--\S+ )*(.+)$", dockerfile, flags=re.MULTILINE)
        for src in line.split()[:-1]
    ]
    assert {"pyproject.toml", "serve_app", "serve_config.yaml", "configs"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not _dockerignored(src, ignore), f"{src} is excluded by .dockerignore"
    # The image's Ray is the cluster's Ray (KubeRay rayVersion) and the one tested here.
    ray_pin = re.search(r"^ARG RAY_VERSION=(\S+)$", dockerfile, flags=re.MULTILINE)
    assert ray_pin is not None and ray_pin.group(1) == ray.__version__
    assert '"ray[serve]==${RAY_VERSION}"' in dockerfile
    # serve_config.yaml's voices_dir must exist and belong to the non-root user in the image.
    voices_dir = _app(_load(PROD))["args"]["api"]["voices_dir"]
    assert re.search(rf"mkdir -p {voices_dir}\b.*chown [^\n]*{voices_dir}", dockerfile, flags=re.DOTALL)
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    cmd = re.search(r"^CMD (.+)$", dockerfile, flags=re.MULTILINE)
    # The draining runner (SIGTERM from `docker stop` lets streams finish), on the production config.
    assert cmd is not None and '"csm-serve", "serve", "--config", "serve_config.yaml"' in cmd.group(1)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^csm-serve = "serve_app\.cli:main"$', pyproject, flags=re.MULTILINE)
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-runtime-", dockerfile, flags=re.MULTILINE)
