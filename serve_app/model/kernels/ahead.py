"""The engine's Triton kernels compiled ahead of their first launch, many at once.

With no Triton cache on the machine (a cluster's first GPU pod, a fresh host), a replica compiles
every kernel specialization it launches one after another as graph capture reaches it: on an H200
machine 117 of them, 58.8 s of a 73.6 s engine start. A pool (`PROCESSES`) compiles them side by side
before capture instead: each lands in Triton's in-memory cache (and its disk cache), and capture then
finds it there; the start took 40.1 s. Which specializations a start needs is recorded on a GPU, by building
the engine with `recording()` on (`python -m serve_app.engine.kernel_list`), and shipped per GPU
target and model geometry in `specializations.json`.

A recorded specialization names a kernel, its arguments' types, alignments and constant values, and
compile options, not its code: compiled ahead, it is the current code's kernel for exactly the launch
that was recorded, so a list older than the code costs time (a kernel compiled that no launch takes,
or one compiled twice), never a wrong kernel. One that no longer fits its kernel's signature fails to
compile and is counted (`AheadReport.failed`)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from serve_app.model.config import CsmModelConfig

logger = logging.getLogger(__name__)

SHIPPED = Path(__file__).with_name("specializations.json")
"""Recorded lists by GPU target and model geometry (`list_key`), each with the Triton version that
recorded it."""

LIST_ENV = "CSM_KERNEL_LIST"
"""Names a file of lists to use instead of the shipped one (recorded for another GPU, say)."""


def target_name(target: object) -> str:
    """A GPU target's key in the shipped list, e.g. `cuda:90`."""
    return f"{getattr(target, 'backend', '?')}:{getattr(target, 'arch', '?')}"


def current_target() -> object:
    """The target Triton compiles for on this process's current device."""
    from triton.runtime.driver import driver

    return driver.active.get_current_target()


@contextlib.contextmanager
def recording() -> Iterator[list[str]]:
    """Collect the serialized specialization of every kernel compiled inside (Triton's JIT cache
    hook: called only for launches not yet in the in-memory cache)."""
    import triton

    specs: list[str] = []
    lock = threading.Lock()

    def hook(**kwargs: object) -> bool:
        compile_info = kwargs["compile"]
        assert isinstance(compile_info, dict)
        with lock:
            specs.append(compile_info["specialization_data"])
        return False  # compile as usual

    runtime = triton.knobs.runtime
    previous = runtime.jit_cache_hook
    runtime.jit_cache_hook = hook
    try:
        yield specs
    finally:
        runtime.jit_cache_hook = previous


def kernel_of(spec: str) -> object:
    """The JIT function a serialized specialization names (`module.name`)."""
    import importlib

    module, _, name = json.loads(spec)["name"].rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclass
class AheadReport:
    """What a compile-ahead did: its specializations compiled and failed, and its wall time."""

    total: int
    compiled: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def compile_here(spec: str) -> None:
    """Compile one specialization in this process (its JIT cache and Triton's disk cache)."""
    kernel_of(spec).preload(spec)  # type: ignore[attr-defined]


def compile_to_disk(spec: str, target: object) -> None:
    """In a pool process: compile one specialization into Triton's disk cache for `target` (the
    starting process's GPU), with no GPU context (this process's driver is told the target)."""
    from triton.runtime.driver import driver

    active = driver.active
    active.get_current_target = lambda: target
    active.get_current_device = lambda: 0
    compile_here(spec)


def _attempt(compile_one: Callable[[str], None], spec: str) -> str | None:
    """Run `compile_one(spec)`; its error as text (picklable from a pool process), or None."""
    try:
        compile_one(spec)
    except Exception as exc:  # noqa: BLE001 - a stale entry: the launch compiles it itself
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


PROCESSES = False
"""Whether the pool is of processes (each compiling into Triton's disk cache, where the launches find
them) rather than threads (into this process's JIT cache, and the disk cache). Triton's compile holds
the GIL for much of its time: with an empty cache, CSM-1B's 117 specializations took 58.8 s one after
another in an H200 machine's start, 21.1 s ahead on 16 threads (each compile 4.6x slower there; the
engine's start 40.1 s against 73.6); on an H100 machine 16.6 s on threads (start 30.4 s), 9.5 s on 16
processes, but the start took 38.9 s: the sampler kernel's 5 specializations missed the disk cache
the processes had filled and were compiled again, one after another (14.5 s; why is not known yet).
`benchmarks/bench_startup.py`, `benchmarks/results/2026-12-06-*-startup-kernels-ahead.json`."""


class CompileAhead:
    """Compiles a list of specializations on a pool (`PROCESSES`), started at once; `wait()` joins it.

    Wait before the first launch (graph capture): a launch whose kernel is not compiled yet compiles it
    again itself."""

    def __init__(
        self,
        specs: list[str],
        workers: int | None = None,
        processes: bool | None = None,
        compile_one: Callable[[str], None] | None = None,
        done_marker: Path | None = None,
    ) -> None:
        """`done_marker`: a file written once every specialization compiled (`start_shipped`)."""
        self.report = AheadReport(total=len(specs))
        self._done_marker = done_marker
        self._t0 = time.perf_counter()
        workers = max(1, min(workers or len(os.sched_getaffinity(0)), 16, len(specs) or 1))
        self._pool: Executor
        if PROCESSES if processes is None else processes:
            spawn = multiprocessing.get_context("spawn")  # no fork of a process holding CUDA state
            self._pool = ProcessPoolExecutor(workers, mp_context=spawn)
            compile_one = compile_one or functools.partial(compile_to_disk, target=current_target())
        else:
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="compile-ahead")
            compile_one = compile_one or compile_here
        self._futures = [self._pool.submit(_attempt, compile_one, spec) for spec in specs]
        self._joined = False

    def wait(self) -> AheadReport:
        if self._joined:
            return self.report
        self._joined = True
        for future in self._futures:
            try:
                error = future.result()
            except Exception as exc:  # noqa: BLE001 - the pool itself broke (a process died)
                error = f"{type(exc).__name__}: {exc}"[:300]
            if error is None:
                self.report.compiled += 1
                continue
            self.report.failed += 1
            if len(self.report.errors) < 5:
                self.report.errors.append(error)
        self._pool.shutdown()
        self.report.seconds = round(time.perf_counter() - self._t0, 2)
        if self._done_marker is not None and not self.report.failed:
            with contextlib.suppress(OSError):  # a read-only cache: compiled ahead again next time
                self._done_marker.parent.mkdir(parents=True, exist_ok=True)
                self._done_marker.write_text(json.dumps(asdict(self.report)))
        logger.info(
            "compiled %d of %d Triton kernel specializations ahead in %.1f s (%d failed: %s)",
            self.report.compiled,
            self.report.total,
            self.report.seconds,
            self.report.failed,
            self.report.errors,
        )
        return self.report


def geometry_key(config: CsmModelConfig) -> str:
    """A model's shapes as a short key: the kernels it launches follow from them, not from its
    weights, rotary scaling or norm epsilon, so every CSM-1B preset shares one list."""
    shapes = asdict(config)
    for part in ("backbone", "decoder"):
        shapes[part] = {k: v for k, v in shapes[part].items() if k not in ("rope", "norm_eps")}
    return hashlib.sha1(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16]


def list_key(target: str, model_key: str) -> str:
    """A recorded list's key in the shipped file: the GPU target and the model's geometry."""
    return f"{target}/{model_key}"


def shipped_specializations(key: str, path: Path | None = None) -> list[str]:
    """The specializations recorded under `key` in `path` (default: `CSM_KERNEL_LIST`, else the
    shipped file); none for a target or model never recorded."""
    path = path or Path(os.environ.get(LIST_ENV) or SHIPPED)
    if not path.exists():
        return []
    entry = json.loads(path.read_text()).get("lists", {}).get(key, {})
    return list(entry.get("specializations", []))


def done_marker(specs: list[str]) -> Path:
    """The file in Triton's cache directory that says `specs` were compiled into it, for this
    Triton and these kernels' code (each JIT function's source hash, with what it calls): with it
    there, a start skips the pool (a warm cache's start pays nothing for it). A kernel whose code
    changed gets another marker; a cache emptied around a marker costs launches compiling again."""
    import triton

    kernels = sorted({kernel_of(spec).cache_key for spec in specs})  # type: ignore[attr-defined]
    digest = hashlib.sha1(json.dumps([triton.__version__, kernels, specs]).encode()).hexdigest()[:20]
    return Path(triton.knobs.cache.dir) / f"csm-serve-compiled-ahead-{digest}.json"


def start_shipped(model_key: str) -> CompileAhead | None:
    """Start compiling the list shipped for this GPU and `model_key` (None without CUDA or Triton,
    with no list for them, with the list compiled into the cache before (`done_marker`), or with
    `CSM_COMPILE_AHEAD=0`)."""
    import torch

    from serve_app.model.kernels import triton_available

    if os.environ.get("CSM_COMPILE_AHEAD", "1") == "0" or not torch.cuda.is_available():
        return None
    if not triton_available() or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    specs = shipped_specializations(list_key(target_name(current_target()), model_key))
    if not specs:
        return None
    try:
        marker = done_marker(specs)
    except Exception:  # noqa: BLE001 - a kernel renamed since the list: compile, counting it
        marker = None
    if marker is not None and marker.exists():
        logger.info("Triton kernels compiled ahead before (%s): nothing to compile", marker.name)
        return None
    return CompileAhead(specs, done_marker=marker)
