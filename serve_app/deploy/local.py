"""Which Ray Serve config `csm-serve serve` (and `make serve`) runs on this machine when given none.

With a CUDA GPU it is the production `serve_config.yaml`, scaled to one machine: one ingress on
127.0.0.1, up to one engine replica per local GPU, voices in the user's data directory. It serves
CSM-1B when its weights are at hand (`$CSM_MODEL_DIR`, or `sesame/csm-1b` in the Hugging Face
cache), else `csm-1b-random`: the same size and speed with random weights, whose output is noise.
Without a GPU it is `configs/serve/local.yaml`: the tiny random model on CPU, noise as well. The
choice and its reason are printed, so nobody mistakes one for the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from serve_app.config import LOCAL_DIR_ENV, get_preset

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_CONFIG = PROJECT_ROOT / "serve_config.yaml"
TINY_CONFIG = PROJECT_ROOT / "configs" / "serve" / "local.yaml"


def read_config(path: Path) -> dict[str, Any]:
    """A config of the project tree, or of the current directory where the package was installed
    without its tree (the image runs from a directory holding serve_config.yaml and configs/)."""
    for candidate in (path, Path.cwd() / path.relative_to(PROJECT_ROOT)):
        if candidate.is_file():
            return yaml.safe_load(candidate.read_text())
    raise FileNotFoundError(
        f"{path.relative_to(PROJECT_ROOT)} is neither in the project tree ({PROJECT_ROOT}) nor in the current "
        "directory: run from a checkout, or pass --config"
    )


@dataclass(frozen=True)
class LocalChoice:
    config: dict[str, Any]
    random_weights: bool
    reason: str


def cuda_device_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA install means "no GPU" here
        return 0


def weights_at_hand(preset_name: str = "csm-1b") -> str | None:
    """Where the preset's weights are without a download, or None."""
    local = os.environ.get(LOCAL_DIR_ENV)
    if local and Path(local).is_dir():
        return local
    preset = get_preset(preset_name)
    if preset.repo_id is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(preset.repo_id, "config.json", revision=preset.revision)
    return str(Path(cached).parent) if isinstance(cached, str) else None


def choose(gpus: int | None = None, weights: str | None | bool = False) -> LocalChoice:
    """The config for this machine. `gpus` and `weights` default to what is found here."""
    gpus = cuda_device_count() if gpus is None else gpus
    found = weights_at_hand() if weights is False else weights
    if gpus and found:
        return LocalChoice(_one_machine(gpus), False, f"{gpus} CUDA GPU(s) and CSM-1B weights at {found}")
    if gpus:
        return LocalChoice(
            _one_machine(gpus, model=RANDOM_FULL_SIZE),
            True,
            f"{gpus} CUDA GPU(s) but no CSM-1B weights (set {LOCAL_DIR_ENV} or fill the HF cache): serving "
            f"{RANDOM_FULL_SIZE}, CSM-1B's size with RANDOM weights, its audio is noise",
        )
    config = read_config(TINY_CONFIG)
    return LocalChoice(config, True, "no CUDA GPU: serving the tiny RANDOM model, its audio is noise")


RANDOM_FULL_SIZE = "csm-1b-random"


def _one_machine(gpus: int, model: str | None = None) -> dict[str, Any]:
    config = read_config(PRODUCTION_CONFIG)
    config["proxy_location"] = "HeadOnly"
    config["http_options"]["host"] = "127.0.0.1"
    app = config["applications"][0]
    if model is not None:
        app["args"]["model"] = model
    api = app["args"].get("api", {})
    api.pop("voices_dir", None)  # /data/voices is a cluster volume
    # A developer's machine: keys and rate limits only when set in the environment (CSM_API_KEYS, ...).
    for name in ("auth_required", "rate_limit_per_minute"):
        api.pop(name, None)
    for deployment in app["deployments"]:
        if deployment["name"] == "TTSModel":
            scaling = deployment["autoscaling_config"]
            scaling["max_replicas"] = gpus
            scaling["min_replicas"] = scaling["initial_replicas"] = 1
        else:
            deployment["num_replicas"] = 1
    return config


def write_config(choice: LocalChoice, directory: Path) -> Path:
    gpu = choice.config["applications"][0]["args"].get("device") != "cpu"
    name = "csm-local-" + ("gpu" if gpu else "cpu") + ("-random" if choice.random_weights else "")
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(choice.config, sort_keys=False))
    return path
