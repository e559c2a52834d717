"""The engine's Triton kernels compiled ahead of their first launch, many at once.

With no Triton cache on the machine (a cluster's first GPU pod, a fresh host), a replica compiles
every kernel specialization it launches one after another as graph capture reaches it: on an H200
machine 117 of them, 58.8 s of a 73.6 s engine start. A pool (`DEFAULT_POOL`: processes, or threads)
compiles them side by side before capture instead: each lands in Triton's in-memory cache (and its
disk cache), and capture then finds it there; the engine process's start took 35.1 s on processes. Which specializations a start needs is recorded on a GPU, by building
the engine with `recording()` on (`python -m serve_app.engine.kernel_list`), and shipped per GPU
target and model geometry in `specializations.json`.

A recorded specialization names a kernel, its arguments' types, alignments and constant values, and
compile options, not its code: compiled ahead, it is the current code's kernel for exactly the launch
that was recorded, so a list older than the code costs time (a kernel compiled that no launch takes,
or one compiled twice), never a wrong kernel. One that no longer fits its kernel's signature fails to
compile and is counted (`AheadReport.failed`).

With the engine's `compile_ahead_early`, its process starts the pool before its heavy imports and the
model's load (`start_for_preset`: the geometry follows from the preset); by default the engine
starts it once the model has loaded."""

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
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
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
    """What a compile-ahead did: its specializations compiled and failed, its wall time and pool.
    `compiled_again`: on processes, those whose load into this process took over a second (a miss
    of the disk cache the pool wrote, compiled again here, or a load kept waiting), by kernel name."""

    total: int
    compiled: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    pool: str = "threads"
    compiled_again: list[str] = field(default_factory=list)


def portable(spec: str) -> str:
    """`spec` without the recording machine's file paths (its libdevice's): this machine's own are
    used, as a launch here uses them (the path is part of Triton's disk-cache key, not the kernel)."""
    data = json.loads(spec)
    options = data.get("options")
    if not isinstance(options, dict) or "extern_libs" not in options:
        return spec
    data["options"] = {k: v for k, v in options.items() if k != "extern_libs"}
    return json.dumps(data)


def compile_here(spec: str) -> None:
    """Compile one specialization in this process (its JIT cache and Triton's disk cache; a disk
    hit only loads it)."""
    kernel_of(spec).preload(portable(spec))  # type: ignore[attr-defined]


def compile_to_disk(spec: str, target: object) -> None:
    """In a pool process: compile one specialization into Triton's disk cache for `target` (the
    starting process's GPU), with no GPU context (this process's driver is told the target)."""
    from triton.runtime.driver import driver

    active = driver.active
    active.get_current_target = lambda: target
    active.get_current_device = lambda: 0
    compile_here(spec)


def _error_text(exc: BaseException) -> str:
    """An error as short text (picklable from a pool process, kept in the report)."""
    return f"{type(exc).__name__}: {exc}"[:300]


def _attempt(compile_one: Callable[[str], None], spec: str) -> str | None:
    """Run `compile_one(spec)`; its error as text (picklable from a pool process), or None."""
    try:
        compile_one(spec)
    except Exception as exc:  # noqa: BLE001 - a stale entry: the launch compiles it itself
        return _error_text(exc)
    return None


POOL_ENV = "CSM_COMPILE_AHEAD"
"""`threads` or `processes` (the pool's kind; `1`: the default, `DEFAULT_POOL`), or `0` (off)."""

DEFAULT_POOL = "processes"
"""The pool a start uses unless `CSM_COMPILE_AHEAD` names one. Triton's compile holds the GIL for much
of its time: with an empty cache, CSM-1B's 117 specializations took 58.8 s one after another in an
H200 machine's start, 21.1 s ahead on 16 threads (each compile 4.6x slower there). Processes compile
side by side into Triton's disk cache, and a thread here loads each into this process's JIT cache as
it lands (`compile_here`, a disk hit). They once lost their gain (the sampler's 5 compiled again at
launch: their keys depended on which kernel a process keyed first, settled now by `keys`). With the
keys settled, one H200 machine, the engine's process as a replica starts it, one start each: 35.1 s
on processes (the pool 9.5 s, nothing compiled again) against 46.3 s on threads (16.5 s).
Up to 16 processes (the CPUs this process may run on) compile for those seconds: on a node whose
other GPU replicas are serving, `CSM_COMPILE_AHEAD=threads` keeps a start off their cores.
`benchmarks/bench_startup.py`, `benchmarks/results/2026-12-07-0553-nvidia-h200-startup.json`."""


def pool_kind() -> str | None:
    """The pool `CSM_COMPILE_AHEAD` asks for: `threads`, `processes`, or None (off)."""
    raw = os.environ.get(POOL_ENV, "1").strip().lower()
    if raw in ("0", "off", "false", "no"):
        return None
    if raw in ("1", "on", "true", "yes", ""):
        return DEFAULT_POOL
    if raw not in ("threads", "processes"):
        raise ValueError(f"{POOL_ENV} must be 0, 1, threads or processes, got {raw!r}")
    return raw


SLOW_LOAD_S = 1.0
"""A load of a kernel the process pool compiled that takes longer is reported (`compiled_again`): it
compiled again here, or waited (for its module's import, say)."""


class CompileAhead:
    """Compiles a list of specializations on a pool, started at once; `wait()` joins it.

    On threads, each compile lands in this process's JIT cache. On processes (spawned: no fork of a
    process holding CUDA state), each lands in Triton's disk cache, and as each finishes a thread
    here loads it into this process's JIT cache (`adopt_one`). Wait before the first launch (graph
    capture): a launch whose kernel is not compiled yet compiles it again itself."""

    def __init__(
        self,
        specs: list[str],
        workers: int | None = None,
        processes: bool | None = None,
        compile_one: Callable[[str], None] | None = None,
        done_marker: Path | None = None,
        adopt_one: Callable[[str], None] | None = None,
        model_key: str | None = None,
    ) -> None:
        """`processes`: None asks `CSM_COMPILE_AHEAD` (`pool_kind`). `done_marker`: a file written
        once every specialization compiled (`start_shipped`). `adopt_one`: on processes, what loads
        a compiled one here (default `compile_here`). `model_key`: the geometry it compiles for."""
        if processes is None:
            processes = pool_kind() == "processes"
        self.report = AheadReport(total=len(specs), pool="processes" if processes else "threads")
        self._done_marker = done_marker
        self._t0 = time.perf_counter()
        workers = max(1, min(workers or len(os.sched_getaffinity(0)), 16, len(specs) or 1))
        self._pools: list[Executor] = []
        self._lock = threading.Lock()
        self._futures: list[Future[str | None]]
        if processes:
            spawn = multiprocessing.get_context("spawn")
            compiling = ProcessPoolExecutor(workers, mp_context=spawn)
            loading = ThreadPoolExecutor(4, thread_name_prefix="compile-ahead-load")
            self._pools = [compiling, loading]
            compile_one = compile_one or functools.partial(compile_to_disk, target=current_target())
            adopt = adopt_one or compile_here
            self._futures = [
                self._then_adopt(compiling.submit(_attempt, compile_one, spec), spec, adopt, loading)
                for spec in specs
            ]
        else:
            threads = ThreadPoolExecutor(workers, thread_name_prefix="compile-ahead")
            self._pools = [threads]
            compile_one = compile_one or compile_here
            self._futures = [threads.submit(_attempt, compile_one, spec) for spec in specs]
        self._joined = False
        self.model_key = model_key

    def _then_adopt(
        self,
        compiled: Future[str | None],
        spec: str,
        adopt: Callable[[str], None],
        loading: Executor,
    ) -> Future[str | None]:
        """A future of `spec`'s outcome: its compile's error, else its load's (on `loading`)."""
        outcome: Future[str | None] = Future()

        def load() -> None:
            t0 = time.perf_counter()
            error = _attempt(adopt, spec)
            if time.perf_counter() - t0 > SLOW_LOAD_S:
                with self._lock:
                    self.report.compiled_again.append(json.loads(spec).get("name", "?").rpartition(".")[2])
            outcome.set_result(error)

        def compiled_then(done: Future[str | None]) -> None:
            try:
                error = done.result()
            except Exception as exc:  # noqa: BLE001 - the pool itself broke (a process died)
                error = _error_text(exc)
            if error is not None:
                outcome.set_result(error)
                return
            try:
                loading.submit(load)
            except RuntimeError as exc:  # shut down: the launch compiles it itself
                outcome.set_result(_error_text(exc))

        compiled.add_done_callback(compiled_then)
        return outcome

    def cancel(self) -> None:
        """Drop what has not started compiling (the start it was for failed); no marker is left."""
        self._done_marker = None
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)

    def wait(self) -> AheadReport:
        if self._joined:
            return self.report
        self._joined = True
        for future in self._futures:
            try:
                error = future.result()
            except Exception as exc:  # noqa: BLE001 - the pool itself broke (a process died)
                error = _error_text(exc)
            if error is None:
                self.report.compiled += 1
                continue
            self.report.failed += 1
            if len(self.report.errors) < 5:
                self.report.errors.append(error)
        for pool in self._pools:
            pool.shutdown()
        self.report.seconds = round(time.perf_counter() - self._t0, 2)
        if self._done_marker is not None and not self.report.failed:
            with contextlib.suppress(OSError):  # a read-only cache: compiled ahead again next time
                self._done_marker.parent.mkdir(parents=True, exist_ok=True)
                self._done_marker.write_text(json.dumps(asdict(self.report)))
        logger.info(
            "compiled %d of %d Triton kernel specializations ahead on %s in %.1f s (%d failed: %s; "
            "compiled again on loading: %s)",
            self.report.compiled,
            self.report.total,
            self.report.pool,
            self.report.seconds,
            self.report.failed,
            self.report.errors,
            self.report.compiled_again,
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


def _kernel_sources(specs: list[str]) -> list[str]:
    """A hash of each source file the listed kernels live in, with every file of this kernels
    package (what they call), read without importing them: an engine process checks its marker
    before its heavy imports."""
    import importlib.util

    files = set(Path(__file__).parent.glob("*.py"))
    for module in {json.loads(spec)["name"].rpartition(".")[0] for spec in specs}:
        found = importlib.util.find_spec(module)
        if found is not None and found.origin:
            files.add(Path(found.origin))
    return [f"{f.name}:{hashlib.sha1(f.read_bytes()).hexdigest()}" for f in sorted(files)]


def done_marker(specs: list[str]) -> Path:
    """The file in Triton's cache directory that says `specs` were compiled into it, for this
    Triton and these kernels' code (their source files): with it there, a start skips the pool (a
    warm cache's start pays nothing for it). Kernel code changed gets another marker; a cache emptied
    around a marker costs launches compiling again."""
    import triton

    sources = _kernel_sources(specs)
    digest = hashlib.sha1(json.dumps([triton.__version__, sources, specs]).encode()).hexdigest()[:20]
    return Path(triton.knobs.cache.dir) / f"csm-serve-compiled-ahead-{digest}.json"


def start_shipped(model_key: str) -> CompileAhead | None:
    """Start compiling the list shipped for this GPU and `model_key` on the pool `CSM_COMPILE_AHEAD`
    names (None without CUDA or Triton, with no list for them, with the list compiled into the cache
    before (`done_marker`), or with `CSM_COMPILE_AHEAD=0`)."""
    import torch

    from serve_app.model.kernels import triton_available

    if pool_kind() is None or not torch.cuda.is_available():
        return None
    if not triton_available() or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    specs = shipped_specializations(list_key(target_name(current_target()), model_key))
    if not specs:
        return None
    try:
        marker = done_marker(specs)
    except Exception:  # noqa: BLE001 - a module moved since the list: compile, counting it
        marker = None
    if marker is not None and marker.exists():
        logger.info("Triton kernels compiled ahead before (%s): nothing to compile", marker.name)
        return None
    return CompileAhead(specs, done_marker=marker, model_key=model_key)


def preset_geometry_key(preset_or_path: str) -> str:
    """The geometry key of the model `preset_or_path` will load, known before its weights are:
    a random preset's own geometry, else CSM-1B's (the released checkpoints; a local directory is
    assumed to hold one too, and checked once loaded)."""
    from serve_app.config import get_preset
    from serve_app.model.tiny import CSM_1B_CONFIG, RANDOM_GEOMETRIES

    if Path(preset_or_path).is_dir():
        return geometry_key(CSM_1B_CONFIG)
    preset = get_preset(preset_or_path)
    return geometry_key(RANDOM_GEOMETRIES[preset.geometry] if preset.format == "random" else CSM_1B_CONFIG)


def start_for_preset(preset_or_path: str) -> CompileAhead | None:
    """`start_shipped` for the model a preset will load, before it loads (its `model_key` says which
    geometry it compiles for; the engine checks it against the loaded model's)."""
    try:
        model_key = preset_geometry_key(preset_or_path)
    except Exception:  # an unknown preset fails at its load, with its own error
        logger.debug("no compile-ahead for %r", preset_or_path, exc_info=True)
        return None
    return start_shipped(model_key)
