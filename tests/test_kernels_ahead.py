"""Compiling the engine's kernels ahead (`serve_app.model.kernels.ahead`): the model's key, the pool,
the shipped lists against the kernels as they are now, and (on a GPU) a start that compiles every
kernel it launches ahead."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from serve_app.model.kernels import ahead
from tests.support_subprocess import python


def test_every_csm_1b_preset_shares_one_key_and_another_geometry_has_its_own() -> None:
    from dataclasses import replace

    from transformers import CsmConfig

    from serve_app.model.config import from_hf_config
    from serve_app.model.tiny import CSM_1B_CONFIG, TINY_CONFIG

    hub = from_hf_config(CsmConfig())  # the transformers layout's config: other rotary settings
    assert hub.backbone.rope != CSM_1B_CONFIG.backbone.rope
    assert ahead.geometry_key(hub) == ahead.geometry_key(CSM_1B_CONFIG)
    assert ahead.geometry_key(TINY_CONFIG) != ahead.geometry_key(CSM_1B_CONFIG)
    fewer_layers = replace(CSM_1B_CONFIG, decoder=replace(CSM_1B_CONFIG.decoder, n_layers=3))
    assert ahead.geometry_key(fewer_layers) != ahead.geometry_key(CSM_1B_CONFIG)


def _meet_the_others(spec: str) -> None:
    """Stands in for a compile: meets the others at a barrier (so it passes only if they run at
    once), or raises for a spec named "stale"."""
    if json.loads(spec)["name"] == "stale":
        raise RuntimeError("signature changed")
    _BARRIER.wait(timeout=10)


_BARRIER = threading.Barrier(3)


def _leave_a_mark(spec: str) -> None:
    """Stands in for a compile in a pool process: leaves a file named by its process id."""
    data = json.loads(spec)
    if data["name"] == "stale":
        raise RuntimeError("signature changed")
    (Path(data["dir"]) / f"{os.getpid()}-{data['name']}").touch()


def test_the_thread_pool_compiles_side_by_side_and_counts_a_stale_entry() -> None:
    specs = [json.dumps({"name": name}) for name in ("a", "b", "stale", "c")]
    report = ahead.CompileAhead(specs, workers=4, processes=False, compile_one=_meet_the_others).wait()
    assert (report.total, report.compiled, report.failed) == (4, 3, 1)
    assert report.errors == ["RuntimeError: signature changed"]


def test_the_process_pool_compiles_in_other_processes_and_counts_a_stale_entry(tmp_path: Path) -> None:
    names = ("a", "b", "stale", "c", "d", "e")
    specs = [json.dumps({"name": name, "dir": str(tmp_path)}) for name in names]
    report = ahead.CompileAhead(specs, workers=2, processes=True, compile_one=_leave_a_mark, adopt_one=len).wait()
    assert (report.total, report.compiled, report.failed) == (6, 5, 1)
    assert report.errors == ["RuntimeError: signature changed"]
    marks = [p.name.split("-") for p in tmp_path.iterdir()]
    assert sorted(name for _, name in marks) == ["a", "b", "c", "d", "e"]
    pids = {int(pid) for pid, _ in marks}
    assert pids and os.getpid() not in pids


def _note_the_load(spec: str) -> None:
    """Stands in for loading a compiled kernel into this process: leaves a file named by its pid."""
    data = json.loads(spec)
    (Path(data["dir"]) / f"{os.getpid()}-loaded-{data['name']}").touch()


def test_on_processes_each_compiled_kernel_is_loaded_into_this_process(tmp_path: Path) -> None:
    names = ("a", "stale", "b", "c")
    specs = [json.dumps({"name": name, "dir": str(tmp_path)}) for name in names]
    report = ahead.CompileAhead(
        specs, workers=2, processes=True, compile_one=_leave_a_mark, adopt_one=_note_the_load
    ).wait()
    assert (report.pool, report.compiled, report.failed) == ("processes", 3, 1)
    loaded = sorted(p.name for p in tmp_path.iterdir() if "-loaded-" in p.name)
    assert loaded == [f"{os.getpid()}-loaded-{name}" for name in ("a", "b", "c")]  # not the stale one
    compiled_elsewhere = {p.name.split("-")[0] for p in tmp_path.iterdir() if "-loaded-" not in p.name}
    assert str(os.getpid()) not in compiled_elsewhere


def test_a_failed_load_is_counted_like_a_failed_compile(tmp_path: Path) -> None:
    specs = [json.dumps({"name": name, "dir": str(tmp_path)}) for name in ("a", "b")]
    report = ahead.CompileAhead(
        specs, workers=2, processes=True, compile_one=_leave_a_mark, adopt_one=_fail_to_load_b
    ).wait()
    assert (report.compiled, report.failed) == (1, 1)
    assert report.errors == ["RuntimeError: load b"]


def _fail_to_load_b(spec: str) -> None:
    if json.loads(spec)["name"] == "b":
        raise RuntimeError("load b")


@pytest.mark.parametrize(
    ("raw", "kind"),
    [(None, "threads"), ("1", "threads"), ("0", None), ("off", None), ("threads", "threads"), ("processes", "processes")],
)
def test_the_pool_kind_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str | None, kind: str | None
) -> None:
    if raw is None:
        monkeypatch.delenv(ahead.POOL_ENV, raising=False)
    else:
        monkeypatch.setenv(ahead.POOL_ENV, raw)
    monkeypatch.setattr(ahead, "DEFAULT_POOL", "threads")
    assert ahead.pool_kind() == kind


def test_an_unknown_pool_kind_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ahead.POOL_ENV, "fibers")
    with pytest.raises(ValueError, match="CSM_COMPILE_AHEAD"):
        ahead.pool_kind()
    with pytest.raises(ValueError, match="CSM_COMPILE_AHEAD"):  # a start fails on it, saying why
        ahead.start_for_preset("csm-1b-random")


def test_a_shipped_specialization_leaves_its_recording_machines_paths_behind() -> None:
    spec = ahead.shipped_specializations(next(iter(json.loads(ahead.SHIPPED.read_text())["lists"])))[0]
    assert "extern_libs" in json.loads(spec)["options"]  # the recording machine's libdevice path
    cleaned = json.loads(ahead.portable(spec))
    assert "extern_libs" not in cleaned["options"]
    assert {k: v for k, v in cleaned.items() if k != "options"} == {
        k: v for k, v in json.loads(spec).items() if k != "options"
    }
    assert ahead.portable(json.dumps({"name": "x"})) == json.dumps({"name": "x"})


def test_a_presets_geometry_is_known_before_it_loads(tmp_path: Path) -> None:
    from serve_app.model.tiny import CSM_1B_CONFIG, TINY_CONFIG

    full, tiny = ahead.geometry_key(CSM_1B_CONFIG), ahead.geometry_key(TINY_CONFIG)
    assert ahead.preset_geometry_key("csm-1b-random") == full
    assert ahead.preset_geometry_key("tiny-random") == tiny
    assert ahead.preset_geometry_key("csm-1b") == full  # the released weights
    assert ahead.preset_geometry_key(str(tmp_path)) == full  # a local checkpoint directory
    with pytest.raises(ValueError):
        ahead.preset_geometry_key("no-such-preset")


def test_a_pool_that_compiled_everything_leaves_its_marker_and_one_with_a_failure_does_not(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "cache" / "done.json"
    specs = [json.dumps({"name": name}) for name in ("a", "b")]
    ahead.CompileAhead(specs[:1], processes=False, compile_one=len, done_marker=marker).wait()
    assert json.loads(marker.read_text())["compiled"] == 1
    marker.unlink()
    stale = [*specs, json.dumps({"name": "stale"})]
    report = ahead.CompileAhead(stale, processes=False, compile_one=_fail_if_stale, done_marker=marker).wait()
    assert report.failed == 1 and not marker.exists()


def _fail_if_stale(spec: str) -> None:
    if json.loads(spec)["name"] == "stale":
        raise RuntimeError("signature changed")


MARKERS = """
import json, sys
from serve_app.model.kernels import ahead
specs = next(iter(json.load(open(ahead.SHIPPED))["lists"].values()))["specializations"]
json.dump([str(ahead.done_marker(specs)), str(ahead.done_marker(specs[1:]))], sys.stdout)
"""


def test_the_marker_lies_in_tritons_cache_and_names_the_list(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    run = python(["-c", MARKERS], TRITON_CACHE_DIR=str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    whole, shorter = (Path(p) for p in json.loads(run.stdout))
    assert whole.parent == tmp_path == shorter.parent and whole != shorter


def test_a_list_file_is_read_by_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serve_app.engine.kernel_list import merge

    path = tmp_path / "lists.json"
    path.write_text(json.dumps(merge(path, "cuda:90/a", ["y", "x", "y"], "3.6.0")))
    path.write_text(json.dumps(merge(path, "cuda:80/a", ["z"], "3.6.0")))
    assert ahead.shipped_specializations("cuda:90/a", path) == ["x", "y"]
    assert ahead.shipped_specializations("cuda:80/a", path) == ["z"]
    assert ahead.shipped_specializations("cuda:90/b", path) == []
    monkeypatch.setenv(ahead.LIST_ENV, str(path))
    assert ahead.shipped_specializations("cuda:80/a") == ["z"]
    assert ahead.shipped_specializations("cuda:80/a", tmp_path / "absent.json") == []


SIGNATURES = """
import json, sys
from serve_app.model.kernels import ahead
out = []
for key, entry in json.load(open(ahead.SHIPPED))["lists"].items():
    for spec in entry["specializations"]:
        data = json.loads(spec)
        kernel = ahead.kernel_of(spec)
        constexprs = [p.name for p in kernel.params if p.is_constexpr]
        out.append({"key": key, "name": data["name"], "recorded": list(data["signature"]),
                    "now": kernel.arg_names, "constexprs": constexprs,
                    "recorded_constexprs": [n for n, t in data["signature"].items() if t == "constexpr"]})
json.dump(out, sys.stdout)
"""


def test_every_shipped_specialization_fits_its_kernel_as_it_is_now() -> None:
    """A kernel renamed, or given or relieved of a parameter, since the list was recorded would make
    its entries compile nothing a launch takes: record the list again
    (`python -m serve_app.engine.kernel_list` on the GPU)."""
    pytest.importorskip("triton")
    run = python(["-c", SIGNATURES])
    assert run.returncode == 0, run.stderr[-3000:]
    entries: list[dict[str, Any]] = json.loads(run.stdout)
    from serve_app.model.tiny import CSM_1B_CONFIG

    csm_1b = ahead.list_key("cuda:90", ahead.geometry_key(CSM_1B_CONFIG))
    assert sum(e["key"] == csm_1b for e in entries) > 10  # the H100 / H200 list of CSM-1B is shipped
    stale = [e["name"] for e in entries if e["recorded"] != e["now"]]
    assert not stale, f"recorded with other parameters than the kernels have now: {sorted(set(stale))}"
    # a constant parameter now was one then (the recorded ones include arguments specialised as 1)
    assert all(set(e["constexprs"]) <= set(e["recorded_constexprs"]) for e in entries)


START = """
import asyncio, json, os, sys
from dataclasses import asdict
from pathlib import Path
from serve_app.engine.engine import Engine
from serve_app.engine.kernel_list import _requests
from serve_app.model.kernels import ahead
from serve_app.model.loading import load_model
from serve_app.model.tiny import TINY_CONFIG

def cubins():
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*.cubin"))

cache = Path(os.environ["TRITON_CACHE_DIR"])
key = ahead.list_key(ahead.target_name(ahead.current_target()), ahead.geometry_key(TINY_CONFIG))
processes = os.environ["AHEAD_PROCESSES"] == "1"
report = ahead.CompileAhead(ahead.shipped_specializations(key), processes=processes).wait()
assert report.compiled_again == [], report  # on processes: every kernel loaded from the disk cache
compiled = cubins()
os.environ["CSM_COMPILE_AHEAD"] = "0"
engine = Engine(load_model("tiny-random", device="cuda"), max_batch_size=8)
asyncio.run(_requests(engine))
engine.close()
json.dump({"report": asdict(report), "ahead": compiled, "after": cubins()}, sys.stdout)
"""


@pytest.mark.gpu
@pytest.mark.timeout(900)
@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_a_start_finds_every_kernel_it_launches_compiled_ahead(tmp_path: Path, processes: bool) -> None:
    """Recorded by one start (an empty Triton cache), the list compiled ahead by the pool (an empty
    cache again) holds every kernel the next start launches, at capture and at its first requests:
    the start compiles none itself (no new cubin in the cache)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    lists = tmp_path / "lists.json"
    record = [
        "-m",
        "serve_app.engine.kernel_list",
        "--model",
        "tiny-random",
        "--max-batch-size",
        "8",
        "--out",
    ]
    recorded = python([*record, str(lists)], TRITON_CACHE_DIR=str(tmp_path / "cache-a"))
    assert recorded.returncode == 0, recorded.stderr[-3000:]
    started = python(
        ["-c", START],
        TRITON_CACHE_DIR=str(tmp_path / "cache-b"),
        AHEAD_PROCESSES=str(int(processes)),
        **{ahead.LIST_ENV: str(lists)},
    )
    assert started.returncode == 0, started.stderr[-3000:]
    got = json.loads(started.stdout)
    listed = next(iter(json.loads(lists.read_text())["lists"].values()))["specializations"]
    assert got["report"]["total"] == len(listed) > 0
    assert got["report"]["compiled"] == len(listed), got["report"]["errors"]
    assert 0 < len(got["ahead"]) <= len(listed)  # a cubin a compile
    compiled_by_the_start = set(got["after"]) - set(got["ahead"])
    assert got["after"] == got["ahead"], compiled_by_the_start


class _StartedPool:
    """Stands in for a `CompileAhead` started before the model loaded."""

    def __init__(self, model_key: str) -> None:
        self.model_key = model_key
        self.joined = False

    def wait(self) -> None:
        self.joined = True


def test_the_engine_keeps_a_pool_started_for_its_geometry_and_replaces_one_for_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from serve_app.engine import engine as engine_module
    from serve_app.model.tiny import CSM_1B_CONFIG, TINY_CONFIG

    started: list[str] = []
    monkeypatch.setattr(engine_module, "start_shipped", lambda key: started.append(key) or f"pool for {key}")
    tiny = ahead.geometry_key(TINY_CONFIG)
    right = _StartedPool(tiny)
    assert engine_module.Engine._kernels_ahead_for(TINY_CONFIG, right) is right  # type: ignore[arg-type]
    assert started == [] and not right.joined
    wrong = _StartedPool(ahead.geometry_key(CSM_1B_CONFIG))
    assert engine_module.Engine._kernels_ahead_for(TINY_CONFIG, wrong) == f"pool for {tiny}"  # type: ignore[arg-type]
    assert wrong.joined and started == [tiny]  # the other geometry's pool finished first, not left competing
    assert engine_module.Engine._kernels_ahead_for(TINY_CONFIG, None) == f"pool for {tiny}"


def _slow_compile(spec: str) -> None:
    import time

    time.sleep(0.2)


def test_a_cancelled_pool_drops_what_had_not_started_and_leaves_no_marker(tmp_path: Path) -> None:
    marker = tmp_path / "done.json"
    specs = [json.dumps({"name": str(i)}) for i in range(20)]
    pool = ahead.CompileAhead(specs, workers=2, processes=False, compile_one=_slow_compile, done_marker=marker)
    pool.cancel()
    report = pool.wait()
    assert report.compiled < len(specs) and report.compiled + report.failed == len(specs)
    assert not marker.exists()
