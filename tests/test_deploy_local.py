"""`csm-serve serve` without a config: CSM-1B on the machine's GPUs when weights are at hand, else
the tiny random model, with the reason stated."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_app.deploy.local import PRODUCTION_CONFIG, choose, weights_at_hand, write_config


def _deployments(config: dict) -> dict[str, dict]:
    return {d["name"]: d for d in config["applications"][0]["deployments"]}


@pytest.mark.parametrize("weights", ["/models/csm-1b", None])
def test_without_gpu_it_is_the_tiny_random_model_on_cpu(weights: str | None) -> None:
    choice = choose(gpus=0, weights=weights)
    args = choice.config["applications"][0]["args"]
    assert choice.random_weights and args["model"] == "tiny-random" and args["device"] == "cpu"
    assert "RANDOM" in choice.reason and "no CUDA GPU" in choice.reason
    assert _deployments(choice.config)["TTSModel"]["ray_actor_options"]["num_gpus"] == 0


def test_gpus_without_weights_give_the_production_graph_with_the_full_size_random_model() -> None:
    choice = choose(gpus=2, weights=None)
    with_weights = choose(gpus=2, weights="/models/csm-1b")
    app = choice.config["applications"][0]
    assert choice.random_weights and app["args"]["model"] == "csm-1b-random"
    assert "RANDOM" in choice.reason and "weights" in choice.reason
    assert _deployments(choice.config)["TTSModel"]["ray_actor_options"]["num_gpus"] == 1
    # The same graph as with weights, but for the model.
    app["args"]["model"] = with_weights.config["applications"][0]["args"]["model"]
    assert choice.config == with_weights.config


def test_gpus_and_weights_give_the_production_graph_scaled_to_this_machine() -> None:
    choice = choose(gpus=3, weights="/models/csm-1b")
    production = yaml.safe_load(PRODUCTION_CONFIG.read_text())
    app = choice.config["applications"][0]
    assert not choice.random_weights and app["args"]["model"] == production["applications"][0]["args"]["model"]
    model, ingress = _deployments(choice.config)["TTSModel"], _deployments(choice.config)["APIIngress"]
    assert model["ray_actor_options"]["num_gpus"] == 1
    assert model["autoscaling_config"]["max_replicas"] == 3 and model["autoscaling_config"]["min_replicas"] == 1
    assert ingress["num_replicas"] == 1
    assert choice.config["http_options"]["host"] == "127.0.0.1"
    assert "voices_dir" not in app["args"].get("api", {})  # the production path is a cluster volume
    assert production["applications"][0]["args"]["api"]["auth_required"] is True
    assert "auth_required" not in app["args"].get("api", {})  # no keys on a developer's machine
    assert _deployments(production)["TTSModel"]["autoscaling_config"]["max_replicas"] != 3  # not edited in place


def test_weights_are_found_in_the_model_dir_or_the_hub_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CSM_MODEL_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert weights_at_hand() is None
    snapshot = tmp_path / "hub" / "models--sesame--csm-1b" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--sesame--csm-1b" / "refs").mkdir()
    (tmp_path / "hub" / "models--sesame--csm-1b" / "refs" / "main").write_text("abc123")
    assert weights_at_hand() == str(snapshot)
    monkeypatch.setenv("CSM_MODEL_DIR", str(tmp_path))
    assert weights_at_hand() == str(tmp_path)


def test_written_config_is_what_serve_run_reads(tmp_path: Path) -> None:
    choice = choose(gpus=0, weights=None)
    path = write_config(choice, tmp_path)
    assert yaml.safe_load(path.read_text()) == choice.config


def test_an_installed_package_reads_the_configs_in_the_current_directory(tmp_path, monkeypatch) -> None:
    """Installed without its tree (as in the image), the package finds serve_config.yaml and
    configs/ in the directory it runs from, or says to pass --config."""
    from serve_app.deploy import local

    shipped = local.TINY_CONFIG.read_text()
    tree = tmp_path / "site-packages"
    tree.mkdir()
    monkeypatch.setattr(local, "PROJECT_ROOT", tree)
    monkeypatch.setattr(local, "TINY_CONFIG", tree / "configs" / "serve" / "local.yaml")
    workdir = tmp_path / "app"
    (workdir / "configs" / "serve").mkdir(parents=True)
    monkeypatch.chdir(workdir)
    with pytest.raises(FileNotFoundError, match="pass --config"):
        local.choose(gpus=0, weights=None)
    (workdir / "configs" / "serve" / "local.yaml").write_text(shipped)
    assert local.choose(gpus=0, weights=None).config["applications"][0]["args"]["model"] == "tiny-random"
