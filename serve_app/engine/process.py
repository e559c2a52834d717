"""The engine in a child process of its own: `ProcessEngine`, a `SpeechEngine` over a socket pair.

A model replica's process hosts two busy threads: the engine's loop thread, which launches the
device's work and makes dozens of torch calls an iteration, and the replica's event loop, which
runs Ray's streaming of every chunk. Each torch call gives the GIL up and must take it back from
the other thread, so under load the loop's host work and launches took about twice as long behind
Ray as in-process, and the device waited on them. Here the engine runs in a child interpreter
with a GIL of its own; the replica's event loop only relays pickled messages.

Messages are tuples sent with `multiprocessing.connection` (pickle, length-prefixed) both ways:

    parent → child   (preset, engine_kwargs, setup) first: what to build
                     (CALL, id, method, args)   method: stream, generate, encode_audio, info, check_health
                     (CANCEL, id)                stop a call (a stream frees its slot at the next frame)
                     (CLOSE,)                    cancel everything, close the engine, exit
    child → parent   (READY, pid) | (FAILED, exc)   once, when the engine is built (or could not be)
                     (CHUNK, id, chunk)          a stream's chunk
                     (RESULT, id, value)         a call's answer; a stream's end (value None)
                     (ERROR, id, exc)            a call's exception, re-raised in the parent as itself
                     (STEP, batch, queue)        the loop's batch size and queue depth, when they change

Each side reads on a thread of its own and hands a burst of messages to its event loop in one
callback. The child exits when its socket closes (the parent died), so it never outlives the replica
holding the GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from serve_app.engine.mailbox import LoopMailbox
from serve_app.engine.types import Audio, AudioChunk, GenerationRequest

logger = logging.getLogger(__name__)

__all__ = ["EngineProcessError", "ProcessEngine"]

CALL, CANCEL, CLOSE = "call", "cancel", "close"
READY, FAILED, CHUNK, RESULT, ERROR, STEP = "ready", "failed", "chunk", "result", "error", "step"

METHODS = frozenset({"stream", "generate", "encode_audio", "info", "check_health"})

STEP_REPORT_S = 0.25
"""How often the child reports a changed batch size and queue depth (the replica's gauges)."""

EXIT_GRACE_S = 10.0
"""How long a child whose parent went away may take to close its engine before it exits anyway."""


class EngineProcessError(RuntimeError):
    """The engine's process failed to start, or exited: no request can be served by it."""


def _picklable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else a RuntimeError that names it (the parent re-raises it)."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure to round-trip
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


class _Sender:
    """`Connection.send` from any thread, whole messages at a time."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def __call__(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self._conn.send(message)


def _read_bursts(conn: Connection, deliver: Callable[[list[tuple[Any, ...]]], None]) -> None:
    """Read messages until the socket closes, handing each burst (all that had arrived) to
    `deliver`; an empty burst means the other side is gone. A message that cannot be read (one
    that does not unpickle) ends the reading as a closed socket does: the calls waiting on it fail
    rather than wait for replies no thread reads any more."""
    while True:
        try:
            burst = [conn.recv()]
            while conn.poll():
                burst.append(conn.recv())
        except (EOFError, OSError):
            deliver([])
            return
        except Exception:
            logger.exception("engine process message could not be read")
            deliver([])
            return
        deliver(burst)


# ---- parent ------------------------------------------------------------------------------------


class ProcessEngine:
    """`SpeechEngine` whose `Engine` runs in a child process (see the module's docstring).

    Built like `Engine.from_preset`: `preset` and `engine_kwargs` go to the child, which loads the
    model there (the parent never touches the device). `on_step` hears the loop's batch size and
    queue depth in this process; `child_setup`, a picklable callable, runs first in the child (its
    logging). Blocks until the child's engine is ready; raises `EngineProcessError` if it fails."""

    def __init__(
        self,
        preset: str = "tiny-random",
        engine_kwargs: dict[str, Any] | None = None,
        *,
        on_step: Callable[[int, int], None] | None = None,
        child_setup: Callable[[], None] | None = None,
        start_timeout_s: float | None = None,
        call_timeout_s: float = 30.0,
    ) -> None:
        """`start_timeout_s`: how long the child may take to build its engine (None: as long as it
        lives; a first start may download the weights). `call_timeout_s`: the longest `info` and
        `check_health` wait for the child's answer."""
        # A fresh interpreter (CUDA cannot live in a forked child), started with `-c`, so nothing of
        # this process's `__main__` (a Ray worker's script) is imported there again.
        parent_socket, child_socket = socket.socketpair()
        self._conn = Connection(parent_socket.detach())
        fd = child_socket.fileno()
        self._process = subprocess.Popen(
            [sys.executable, "-c", f"from serve_app.engine.process import child_main; child_main({fd})"],
            pass_fds=(fd,),
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        )
        child_socket.close()
        self._conn.send((preset, dict(engine_kwargs or {}), child_setup))
        self._send = _Sender(self._conn)
        self._on_step = on_step
        self._call_timeout_s = call_timeout_s
        self._ids = itertools.count()
        self._calls: dict[int, tuple[LoopMailbox, asyncio.Queue[tuple[Any, ...]]]] = {}
        self._mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopMailbox] = (
            weakref.WeakKeyDictionary()
        )
        self._calls_lock = threading.Lock()
        self._gone: str | None = None
        self._closed = False
        try:
            self.pid = self._await_ready(start_timeout_s)
        except BaseException:
            self._conn.close()
            raise
        self._reader = threading.Thread(
            target=_read_bursts, args=(self._conn, self._deliver), name="csm-engine-replies", daemon=True
        )
        self._reader.start()

    def _await_ready(self, timeout_s: float | None) -> int:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._conn.poll(1.0):
            if self._process.poll() is not None:
                raise EngineProcessError(f"engine process exited with code {self._process.returncode} while starting")
            if deadline is not None and time.monotonic() > deadline:
                self._kill()
                raise EngineProcessError(f"engine process not ready after {timeout_s:g} s")
        try:
            kind, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            self._kill()
            raise EngineProcessError("engine process exited while starting") from exc
        if kind == FAILED:
            self._kill()
            raise EngineProcessError(f"engine failed to start: {value!r}") from value
        return int(value)

    # -- replies (reader thread → the calls' event loops) --
    def _deliver(self, burst: list[tuple[Any, ...]]) -> None:
        if not burst:
            self._fail_all(f"engine process exited (code {self._process.poll()})" if not self._closed else "engine closed")
            return
        for message in burst:
            if message[0] == STEP:
                if self._on_step is not None:
                    try:
                        self._on_step(message[1], message[2])
                    except Exception:  # an observer must never stop the replies (as in the engine's loop)
                        logger.exception("step observer failed")
                continue
            with self._calls_lock:
                call = self._calls.get(message[1])
            if call is not None:
                self._post(*call, message)

    def _fail_all(self, reason: str) -> None:
        self._gone = reason
        with self._calls_lock:
            calls = list(self._calls.items())
        for call_id, (mailbox, replies) in calls:
            self._post(mailbox, replies, (ERROR, call_id, EngineProcessError(reason)))

    @staticmethod
    def _post(mailbox: LoopMailbox, replies: asyncio.Queue[tuple[Any, ...]], message: tuple[Any, ...]) -> None:
        """Hand `message` to its call's event loop (a burst's messages in one wakeup)."""
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there any more
            mailbox.post(replies, message)

    # -- calls --
    def _open(self, method: str, args: tuple[Any, ...]) -> tuple[int, asyncio.Queue[tuple[Any, ...]]]:
        if self._gone is not None:
            raise EngineProcessError(self._gone)
        call_id = next(self._ids)
        replies: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        mailbox = self._mailboxes.get(loop) or self._mailboxes.setdefault(loop, LoopMailbox(loop))
        with self._calls_lock:
            self._calls[call_id] = (mailbox, replies)
        if self._gone is not None:  # it went while this call registered: `_fail_all` may have missed it
            self._forget(call_id)
            raise EngineProcessError(self._gone)
        try:
            self._send((CALL, call_id, method, args))
        except (OSError, ValueError) as exc:
            self._forget(call_id)
            raise EngineProcessError(f"engine process unreachable: {exc}") from exc
        return call_id, replies

    def _forget(self, call_id: int) -> None:
        with self._calls_lock:
            self._calls.pop(call_id, None)

    async def _call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        call_id, replies = self._open(method, args)
        try:
            kind, _, value = await asyncio.wait_for(replies.get(), timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._cancel(call_id)
            raise
        finally:
            self._forget(call_id)
        if kind == ERROR:
            raise value
        return value

    def _cancel(self, call_id: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._send((CANCEL, call_id))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[AudioChunk]:
        """The child's chunks as they come; leaving early cancels the stream there."""
        entered = time.time()
        call_id, replies = self._open("stream", (request,))
        finished, first = False, True
        try:
            while True:
                kind, _, value = await replies.get()
                if kind == CHUNK:
                    if first:
                        value.trace, first = (*value.trace, ("relay", entered, time.time())), False
                    yield value
                    continue
                finished = True
                if kind == ERROR:
                    raise value
                return
        finally:
            self._forget(call_id)
            if not finished:
                self._cancel(call_id)

    async def generate(self, request: GenerationRequest) -> Audio:
        return await self._call("generate", request)

    async def encode_audio(self, pcm: np.ndarray) -> np.ndarray:
        return await self._call("encode_audio", pcm)

    async def info(self) -> dict[str, Any]:
        """The child engine's info, with its process (`engine_process`: pid, objects kept out of the GC)."""
        return await self._call("info", timeout_s=self._call_timeout_s)

    async def check_health(self) -> None:
        """Raise if the child exited, answers late, or its engine is unhealthy."""
        if self._gone is not None or self._process.poll() is not None:
            raise EngineProcessError(self._gone or f"engine process exited (code {self._process.returncode})")
        try:
            await self._call("check_health", timeout_s=self._call_timeout_s)
        except asyncio.TimeoutError:
            raise EngineProcessError(f"engine process did not answer in {self._call_timeout_s:g} s") from None

    def close(self, timeout_s: float = 30.0) -> None:
        """Ask the child to cancel its requests, close its engine and exit; kill it if it will not."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, ValueError):
            self._send((CLOSE,))
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout_s)
        self._kill()
        with contextlib.suppress(OSError):
            self._conn.close()

    def _kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(5.0)


# ---- child -------------------------------------------------------------------------------------


def child_main(fd: int) -> None:
    """The child's entry point (`python -c`): read what to build from the socket `fd`, build the
    engine, answer READY (or FAILED), serve until CLOSE or EOF.

    With `compile_ahead_early`, the kernels' compile-ahead starts first, before the engine's imports
    (torch, transformers: some 13 s on a GPU host) and the model's load, to compile behind them."""
    t0 = time.perf_counter()
    conn = Connection(fd)
    preset, engine_kwargs, setup = conn.recv()
    send = _Sender(conn)
    try:
        if setup is not None:
            setup()
        kernels_ahead = _start_kernels_ahead(preset, engine_kwargs)
        from serve_app.engine.engine import Engine, freeze_built_objects, lower_switch_interval

        imports_s = round(time.perf_counter() - t0, 2)
        lower_switch_interval()  # this process hosts the engine's loop thread
        steps = _StepReport()
        engine = Engine.from_preset(preset, on_step=steps.update, kernels_ahead=kernels_ahead, **engine_kwargs)
        engine.startup = {"imports_s": imports_s, **engine.startup, "process_s": round(time.perf_counter() - t0, 2)}
        logger.info("engine process started: %s", engine.startup)
    except Exception as exc:  # reported to the parent, which raises it
        logger.exception("engine process failed to start")
        send((FAILED, _picklable(exc)))
        return
    freeze_built_objects()  # what the engine built lives as long as the process: out of every collection
    send((READY, os.getpid()))
    try:
        asyncio.run(_ChildServer(engine, conn, send, steps).serve())
    finally:
        engine.close()


def _start_kernels_ahead(preset: str, engine_kwargs: dict[str, Any]) -> Any:
    """`ahead.start_for_preset` where the engine will run on CUDA with `compile_ahead_early` (None
    elsewhere: the engine starts its own once the model has loaded)."""
    import torch

    from serve_app.engine.config import EngineConfig

    if not engine_kwargs.get("compile_ahead_early", EngineConfig.compile_ahead_early):
        return None
    device = engine_kwargs.get("device")
    if not torch.cuda.is_available() or (device is not None and not str(device).startswith("cuda")):
        return None
    from serve_app.model.kernels.ahead import start_for_preset

    return start_for_preset(preset)


class _StepReport:
    """The loop's latest batch size and queue depth (written by its thread, read by the reporter)."""

    def __init__(self) -> None:
        self.latest: tuple[int, int] | None = None

    def update(self, batch_size: int, queue_depth: int) -> None:
        self.latest = (batch_size, queue_depth)


class _ChildServer:
    """Runs the parent's calls on the child's event loop, one task each."""

    def __init__(self, engine: Any, conn: Connection, send: _Sender, steps: _StepReport) -> None:
        self.engine, self.conn, self.send, self.steps = engine, conn, send, steps
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.done = asyncio.Event()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()

        def deliver(burst: list[tuple[Any, ...]]) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.handle, burst)

        threading.Thread(target=_read_bursts, args=(self.conn, deliver), name="csm-engine-calls", daemon=True).start()
        reporter = asyncio.create_task(self.report_steps())
        await self.done.wait()
        reporter.cancel()
        for task in list(self.tasks.values()):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=EXIT_GRACE_S)

    def handle(self, burst: list[tuple[Any, ...]]) -> None:
        if not burst:  # the parent is gone: stop, and exit even if closing hangs
            threading.Timer(EXIT_GRACE_S, os._exit, args=(1,)).start()
            self.done.set()
            return
        for message in burst:
            if message[0] == CALL:
                _, call_id, method, args = message
                task = self.tasks[call_id] = asyncio.create_task(self.run(call_id, method, args))
                # forgotten when done, not in `run`'s finally: a call cancelled in the same burst that
                # brought it is cancelled before `run` starts, and its body (finally included) never runs
                task.add_done_callback(lambda _, call_id=call_id: self.tasks.pop(call_id, None))
            elif message[0] == CANCEL:
                task = self.tasks.get(message[1])
                if task is not None:
                    task.cancel()
            elif message[0] == CLOSE:
                self.done.set()

    async def run(self, call_id: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            if method not in METHODS:
                raise ValueError(f"unknown engine method {method!r}")
            if method == "stream":
                async for chunk in self.engine.stream(*args):
                    self.send((CHUNK, call_id, chunk))
                value = None
            else:
                value = await getattr(self.engine, method)(*args)
            if method == "info":
                value = {**value, "engine_process": {"pid": os.getpid(), "gc_frozen_objects": gc.get_freeze_count()}}
            self.send((RESULT, call_id, value))
        except asyncio.CancelledError:
            pass  # the parent cancelled it and waits for nothing
        except Exception as exc:  # noqa: BLE001 - re-raised in the parent
            with contextlib.suppress(OSError, ValueError):
                self.send((ERROR, call_id, _picklable(exc)))

    async def report_steps(self) -> None:
        sent = None
        while True:
            await asyncio.sleep(STEP_REPORT_S)
            latest = self.steps.latest
            if latest is not None and latest != sent:
                with contextlib.suppress(OSError, ValueError):
                    self.send((STEP, *latest))
                sent = latest
