"""`ProcessEngine`: the tiny engine in a spawned child process, reached over its socket pair. Its
streams equal the in-process engine's, errors cross as their own class, leaving a stream frees the
child's slot, and a child that dies or fails to start is an error in the parent, never a hang."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from serve_app.engine.engine import Engine
from serve_app.engine.process import EngineProcessError, ProcessEngine
from serve_app.engine.types import AudioChunk, EngineOverloadedError
from tests import support_engine as se

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG: dict[str, Any] = {
    "device": "cpu",
    "max_batch_size": 1,
    "max_waiting": 0,
    "first_chunk_frames": 1,
    "chunk_frames": 3,
}


@pytest.fixture(scope="module")
def steps() -> list[tuple[int, int]]:
    return []


@pytest.fixture(scope="module")
def engine(one_thread: None, steps: list[tuple[int, int]]) -> Iterator[ProcessEngine]:
    eng = ProcessEngine("tiny-random", CONFIG, on_step=lambda batch, queue: steps.append((batch, queue)))
    yield eng
    eng.close()


async def _chunks(engine: Any, frames: int, seed: int) -> list[AudioChunk]:
    return [chunk async for chunk in engine.stream(se.request("a few words to say", frames=frames, seed=seed))]


def _wait_idle(engine: ProcessEngine, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while asyncio.run(engine.info())["running"]:
        assert time.monotonic() < deadline, "the child kept a stream running"
        time.sleep(0.05)


def test_streams_what_the_in_process_engine_streams(engine: ProcessEngine) -> None:
    """Same seed, same config: the same chunk sizes, samples and codes, and the first chunk carries
    the child engine's own first-audio timing and its way: into the relay, the engine, and out."""
    local = Engine.from_preset("tiny-random", **CONFIG)
    try:
        expected = asyncio.run(_chunks(local, frames=5, seed=11))
    finally:
        local.close()
    got = asyncio.run(_chunks(engine, frames=5, seed=11))
    assert [len(c.pcm) for c in got] == [len(c.pcm) for c in expected]
    np.testing.assert_array_equal(np.concatenate([c.codes for c in got]), np.concatenate([c.codes for c in expected]))
    # The child's torch may use more threads than this process: sums round apart in the last bits.
    np.testing.assert_allclose(
        np.concatenate([c.pcm for c in got]), np.concatenate([c.pcm for c in expected]), rtol=0, atol=1e-6
    )
    assert got[-1].is_last and not any(c.is_last for c in got[:-1])
    assert got[0].first_audio_ms is not None and got[0].first_audio_ms > 0
    (engine_layer, engine_in, engine_out), (relay_layer, relay_in, relay_out) = got[0].trace
    assert (engine_layer, relay_layer) == ("engine", "relay")
    assert relay_in <= engine_in < engine_out <= relay_out
    assert (engine_out - engine_in) * 1000 == pytest.approx(got[0].first_audio_ms, abs=5.0)
    assert all(c.trace == () for c in got[1:])


def test_generate_encode_info_and_health_answer(engine: ProcessEngine, steps: list[tuple[int, int]]) -> None:
    _wait_idle(engine)  # the test before's stream, if its slot is not freed yet
    audio = asyncio.run(engine.generate(se.request("a few words to say", frames=4, seed=2)))
    _wait_idle(engine)  # its slot is freed in the child just after the last chunk: one slot, none waiting
    chunks = asyncio.run(_chunks(engine, frames=4, seed=2))
    np.testing.assert_array_equal(audio.codes, np.concatenate([c.codes for c in chunks]))
    codes = asyncio.run(engine.encode_audio(np.zeros(24_000 // 2, np.float32)))
    assert codes.ndim == 2 and codes.shape[1] == 32 and codes.dtype == np.int64
    info = asyncio.run(engine.info())
    assert info["engine_process"]["pid"] == engine.pid != os.getpid()
    assert info["engine_process"]["gc_frozen_objects"] > 10_000  # the engine's start-up objects, out of the GC
    assert info["slots"] == 1 and info["steps"] > 0
    startup = info["startup"]  # where the child's start went, phase by phase
    assert 0 < startup["imports_s"] < startup["process_s"]
    assert startup["load_s"] > 0 and startup["capture_s"] > 0
    # each phase is rounded to 0.01 s on its own: four roundings, each off by at most 0.005
    assert startup["imports_s"] + startup["load_s"] + startup["engine_s"] <= startup["process_s"] + 0.02
    assert startup["kernels_ahead"] is None  # a CPU engine compiles nothing ahead
    asyncio.run(engine.check_health())

    async def batch_seen_while_streaming() -> None:  # the child reports its loop's batch as it changes
        stream = engine.stream(se.request("a long one", frames=400, seed=3))
        await anext(stream)
        try:
            deadline = time.monotonic() + 10
            while (1, 0) not in steps:
                assert time.monotonic() < deadline, steps
                await asyncio.sleep(0.05)
        finally:
            await stream.aclose()

    _wait_idle(engine)
    asyncio.run(batch_seen_while_streaming())


def test_engine_errors_cross_as_their_own_class(engine: ProcessEngine) -> None:
    with pytest.raises(ValueError, match="text must not be empty"):
        asyncio.run(engine.generate(se.request("   ", frames=2)))

    async def two_at_once() -> None:  # one slot, no waiting room: the second is refused
        first = engine.stream(se.request("a long one", frames=400, seed=1))
        await anext(first)
        try:
            with pytest.raises(EngineOverloadedError):
                await _chunks(engine, frames=2, seed=1)
        finally:
            await first.aclose()

    _wait_idle(engine)
    asyncio.run(two_at_once())
    asyncio.run(engine.check_health())  # and the child serves on


def test_leaving_a_stream_frees_the_childs_slot(engine: ProcessEngine) -> None:
    _wait_idle(engine)

    async def leave_early() -> None:
        stream = engine.stream(se.request("a long one", frames=400, seed=4))
        await anext(stream)
        assert (await engine.info())["running"] == 1
        await stream.aclose()

    asyncio.run(leave_early())
    _wait_idle(engine)
    assert len(asyncio.run(_chunks(engine, frames=2, seed=4))) >= 1  # the slot serves again


def test_a_child_that_dies_fails_its_streams_and_health() -> None:
    eng = ProcessEngine("tiny-random", CONFIG)
    try:

        async def killed_mid_stream() -> None:
            stream = eng.stream(se.request("a long one", frames=400, seed=4))
            await anext(stream)
            os.kill(eng.pid, signal.SIGKILL)
            with pytest.raises(EngineProcessError, match="exited"):
                async for _ in stream:
                    pass
            with pytest.raises(EngineProcessError):
                await eng.check_health()
            with pytest.raises(EngineProcessError):
                await eng.generate(se.request("more", frames=2))

        asyncio.run(asyncio.wait_for(killed_mid_stream(), 30))
    finally:
        eng.close()


def test_a_child_that_cannot_start_is_an_error_at_once() -> None:
    began = time.monotonic()
    with pytest.raises(EngineProcessError, match="failed to start"):
        ProcessEngine("no-such-preset-anywhere", {"device": "cpu"})
    assert time.monotonic() - began < 60


def test_close_ends_the_child_and_its_streams() -> None:
    eng = ProcessEngine("tiny-random", CONFIG)

    async def closed_mid_stream() -> None:
        stream = eng.stream(se.request("a long one", frames=400, seed=4))
        await anext(stream)
        await asyncio.to_thread(eng.close)
        with pytest.raises(EngineProcessError):
            async for _ in stream:
                pass

    asyncio.run(asyncio.wait_for(closed_mid_stream(), 60))
    assert eng._process.returncode == 0


def test_a_child_slower_than_its_start_timeout_is_killed() -> None:
    began = time.monotonic()
    with pytest.raises(EngineProcessError, match="not ready after 0.5 s"):
        ProcessEngine("tiny-random", CONFIG, start_timeout_s=0.5)  # importing torch alone takes longer
    assert time.monotonic() - began < 30


def test_a_call_cancelled_in_the_burst_that_brought_it_is_forgotten_by_the_child() -> None:
    """A client that leaves at once sends the call and its cancel together: the child's task is then
    cancelled before it starts, and must not stay behind holding the request."""
    from serve_app.engine.process import CALL, CANCEL, _ChildServer, _StepReport

    class NeverDone:
        async def generate(self, request: Any) -> None:
            await asyncio.Event().wait()

    async def leftover_tasks() -> dict[int, Any]:
        server = _ChildServer(NeverDone(), None, lambda message: None, _StepReport())  # type: ignore[arg-type]
        request = se.request("hi", frames=1, seed=0)
        server.handle([(CALL, 1, "generate", (request,)), (CANCEL, 1)])  # one burst
        server.handle([(CALL, 2, "generate", (request,))])
        await asyncio.sleep(0)  # call 2 has started ...
        server.handle([(CANCEL, 2)])  # ... and is cancelled in a later burst
        for _ in range(3):
            await asyncio.sleep(0)
        return dict(server.tasks)

    assert asyncio.run(leftover_tasks()) == {}


def test_a_failing_step_observer_does_not_stop_the_replies() -> None:
    calls = []

    def observer(batch: int, queue: int) -> None:
        calls.append(batch)
        raise RuntimeError("an observer's own failure")

    eng = ProcessEngine("tiny-random", CONFIG, on_step=observer)
    try:
        for seed in (1, 2):
            request = se.request("a few words", frames=4, seed=seed)
            audio = asyncio.run(asyncio.wait_for(eng.generate(request), 60))
            assert len(audio.codes) == 4
        assert calls  # it was called, and failed, while the calls were answered
        asyncio.run(eng.check_health())
    finally:
        eng.close()
