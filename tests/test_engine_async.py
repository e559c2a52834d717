"""The Engine front end on the tiny preset: async streams off the event loop, cancellation by closing
the iterator, admission control, sync forms, concurrent requests, info."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sys
import time

import numpy as np
import pytest
import torch

from serve_app.engine import engine as engine_module
from serve_app.engine.engine import Engine, lower_switch_interval
from serve_app.engine.types import EngineOverloadedError, FinishReason, GenerationRequest, Segment
from tests import support_engine as se

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engine(one_thread: None):
    eng = Engine.from_preset(
        "tiny-random", device="cpu", max_batch_size=2, max_waiting=1, first_chunk_frames=1, chunk_frames=3
    )
    yield eng
    eng.close()


def wait_idle(engine: Engine, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.loop.scheduler.counts()["running"] or engine.loop.scheduler.counts()["waiting"]:
        assert time.monotonic() < deadline, "engine did not go idle"
        time.sleep(0.01)


def test_a_short_prompt_is_built_on_the_event_loop_and_a_costly_one_in_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No thread-pool hop before a short request's engine call; a long text, context audio to encode
    or a long context still leave the event loop; every form streams."""
    hops: list[str] = []
    to_thread = asyncio.to_thread

    async def counted(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(func.__name__)
        return await to_thread(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counted)
    def request(text: str, *context: Segment) -> GenerationRequest:
        return dataclasses.replace(se.request(text, frames=2, seed=5), context=list(context))

    codes = np.zeros((3, 32), np.int64)
    long_text = "word " * (engine_module.INLINE_PROMPT_CHARS // 5 + 1)
    many_frames = np.zeros((engine_module.INLINE_PROMPT_CONTEXT_FRAMES + 1, 32), np.int64)
    cases = {
        "short": (request("short words"), []),
        "short, context codes": (request("short words", Segment("hi", 0, codes=codes)), []),
        "long text": (request(long_text), ["_sequence"]),
        "context audio": (
            request("short words", Segment("hi", 0, audio=np.zeros(1920, np.float32))),
            ["_sequence"],
        ),
        "long context": (request("short words", Segment("hi", 0, codes=many_frames)), ["_sequence"]),
    }
    engine = Engine.from_preset("tiny-random", device="cpu", max_batch_size=2)  # the module's keeps its clock
    for name, (request, expected) in cases.items():
        hops.clear()
        assert engine_module.builds_inline(request) is not expected, name

        async def run(request=request):  # type: ignore[no-untyped-def]
            return [chunk async for chunk in engine.stream(request)]

        chunks = asyncio.run(run())
        assert hops == expected, name
        assert chunks[-1].is_last and sum(c.frames for c in chunks) == 2, name
    engine.close()


def test_stream_runs_off_the_event_loop_and_equals_generate(engine: Engine) -> None:
    req = se.request("async words", frames=5, seed=21)

    async def main():
        ticks, chunks = 0, []

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.002)

        task = asyncio.create_task(ticker())
        async for chunk in engine.stream(req):
            chunks.append(chunk)
        task.cancel()
        return ticks, chunks, await engine.generate(req)

    ticks, chunks, audio = asyncio.run(main())
    assert ticks > 10  # the loop kept running while frames were computed
    sizes = [c.frames for c in chunks]  # ramped (and aligned to the loop's frame clock): 1, then doubling at most
    assert sizes[0] == 1 and sum(sizes) == 5 and all(b <= 2 * a for a, b in itertools.pairwise(sizes))
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    np.testing.assert_array_equal(np.concatenate([c.codes for c in chunks]), audio.codes)
    # Chunk boundaries follow the loop's frame clock, so the two runs may cut the audio differently:
    # the same samples up to float rounding.
    np.testing.assert_allclose(np.concatenate([c.pcm for c in chunks]), audio.pcm, atol=1e-5)
    sync = engine.generate_sync(req)  # same seed, other front end, no event loop
    np.testing.assert_array_equal(sync.codes, audio.codes)
    assert sync.pcm.shape == (5 * 1920,)


def test_closing_the_stream_cancels_at_the_next_frame_and_frees_the_slot(engine: Engine) -> None:
    async def main():
        stream = engine.stream(se.request("a long one", frames=200, seed=2))
        first = await stream.__anext__()
        await stream.aclose()
        return first

    first = asyncio.run(main())
    assert first.frames == 1 and not first.is_last
    wait_idle(engine)
    steps = engine.loop.steps
    time.sleep(0.2)
    assert engine.loop.steps == steps  # nothing is stepped any more
    assert engine.loop.scheduler.free_slots == 2
    assert len(engine.loop.runner.decoder.free_slots) == 2
    assert bool((engine.loop.runner.positions < 0).all())

    sync = engine.stream_sync(se.request("sync too", frames=200, seed=3))
    assert next(sync).frames == 1
    sync.close()
    wait_idle(engine)


def test_concurrent_requests_share_the_batch_and_overflow_is_refused(engine: Engine) -> None:
    reqs = [se.request(f"voice {i}", frames=4, seed=i) for i in range(3)]
    solo = [engine.generate_sync(r).codes for r in reqs]

    async def main():
        # two slots and one waiting place: three fit, a fourth is refused
        streams = [engine.stream(r) for r in reqs]
        firsts = [asyncio.ensure_future(s.__anext__()) for s in streams]
        await asyncio.sleep(0)
        while len(engine.loop.scheduler.waiting) + len(engine.loop.scheduler.running) < 3:
            await asyncio.sleep(0.005)
        with pytest.raises(EngineOverloadedError):
            await engine.stream(se.request("one too many", frames=2)).__anext__()
        out = []
        for s, f in zip(streams, firsts):
            chunks = [await f] + [c async for c in s]
            out.append(np.concatenate([c.codes for c in chunks]))
        return out

    for got, ref in zip(asyncio.run(main()), solo):
        np.testing.assert_array_equal(got, ref)


def test_info_reports_slots_and_streaming_settings(engine: Engine) -> None:
    info = asyncio.run(engine.info())
    assert info["engine"] == "continuous-batching" and info["slots"] == 2 and info["max_waiting"] == 1
    assert info["chunk_frames"] == {"first": 1, "later": 3, "ramp": True, "align": True}
    assert info["cuda_graphs"] is False and info["device"] == "cpu"
    asyncio.run(engine.check_health())


def test_closed_engine_refuses_work_and_fails_health() -> None:
    eng = Engine.from_preset("tiny-random", device="cpu", max_batch_size=1)
    eng.close()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(eng.check_health())
    with pytest.raises(RuntimeError, match="closed"):
        eng.generate_sync(se.request("late", frames=2))


def test_an_engine_leaves_the_process_switch_interval_alone() -> None:
    """Only the process owner (a model replica, the CLI) lowers it, with `lower_switch_interval`."""
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        Engine.from_preset("tiny-random", device="cpu", max_batch_size=1).close()
        assert sys.getswitchinterval() == pytest.approx(0.005)
        lower_switch_interval()
        assert sys.getswitchinterval() == pytest.approx(0.0005)
        lower_switch_interval(0.002)  # never raised
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)


def test_the_switch_interval_of_an_engine_process_is_set_from_the_environment(monkeypatch) -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        monkeypatch.setenv("CSM_GIL_SWITCH_INTERVAL_S", "0.0001")
        lower_switch_interval()
        assert sys.getswitchinterval() == pytest.approx(0.0001)
        for bad in ("fast", "0", "-1", "2"):
            monkeypatch.setenv("CSM_GIL_SWITCH_INTERVAL_S", bad)
            with pytest.raises(ValueError, match="CSM_GIL_SWITCH_INTERVAL_S"):
                lower_switch_interval()
        assert sys.getswitchinterval() == pytest.approx(0.0001)  # a refused value changes nothing
    finally:
        sys.setswitchinterval(before)


def test_a_stuck_loop_iteration_fails_the_health_check(monkeypatch) -> None:
    """A loop thread wedged inside one iteration (a hung device call) makes the replica unhealthy,
    so Ray replaces it; the same loop back to normal is healthy again."""
    eng = Engine.from_preset("tiny-random", device="cpu", max_batch_size=1, stuck_iteration_s=0.2)
    release = __import__("threading").Event()
    real_run_once = eng.loop.run_once

    def stuck_run_once() -> bool:
        release.wait(10)
        return real_run_once()

    monkeypatch.setattr(eng.loop, "run_once", stuck_run_once)
    try:
        asyncio.run(eng.check_health())
        stream = eng.stream_sync(se.request("stuck", frames=2))
        started = __import__("threading").Thread(target=lambda: list(stream), daemon=True)
        started.start()
        deadline = time.monotonic() + 5
        while eng.loop.iteration_s() <= 0.2:
            assert time.monotonic() < deadline, "the loop never entered its iteration"
            time.sleep(0.02)
        with pytest.raises(RuntimeError, match="stuck in one iteration"):
            asyncio.run(eng.check_health())
        assert asyncio.run(eng.info())["iteration_s"] > 0.2  # what operators (and the GPU suite) watch
        release.set()
        started.join(10)
        assert not started.is_alive()
        asyncio.run(eng.check_health())
    finally:
        release.set()
        eng.close()


def test_the_first_chunk_says_when_it_reached_the_engine(engine: Engine) -> None:
    async def main() -> list:
        return [chunk async for chunk in engine.stream(se.request("timed", frames=4))]

    began = time.perf_counter()
    chunks = asyncio.run(main())
    elapsed_ms = (time.perf_counter() - began) * 1000
    assert 0 < chunks[0].first_audio_ms <= elapsed_ms
    assert 0 < chunks[0].admitted_ms < chunks[0].first_audio_ms  # its first step, then its audio
    assert 0 <= chunks[0].queued_ms <= chunks[0].admitted_ms  # queued for the loop, then admitted
    later = chunks[1:]
    assert all(c.first_audio_ms is None and c.admitted_ms is None and c.queued_ms is None for c in later)


def test_weights_that_are_not_finite_refuse_to_start() -> None:
    from serve_app.model.loading import load_model

    loaded = load_model("tiny-random", device="cpu")
    with torch.no_grad():
        loaded.model.codebook0_head.weight[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="not finite"):
        Engine(loaded)


def test_a_slow_iteration_is_logged_with_what_the_device_was_given(monkeypatch, caplog) -> None:
    import serve_app.engine.loop as loop_module

    monkeypatch.setattr(loop_module, "SLOW_ITERATION_S", 0.3)
    eng = Engine.from_preset("tiny-random", device="cpu", max_batch_size=2)
    real_fetch, slowed = eng.loop.runner.fetch, []

    def slow_fetch(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not slowed:
            slowed.append(True)
            time.sleep(0.5)  # the device taking its time with what was queued
        return real_fetch(*args, **kwargs)

    monkeypatch.setattr(eng.loop.runner, "fetch", slow_fetch)
    try:
        with caplog.at_level("WARNING", logger="serve_app.engine.loop"):
            eng.generate_sync(se.request("slow", frames=3))
    finally:
        eng.close()
    [line] = [r.getMessage() for r in caplog.records if "iteration took" in r.getMessage()]
    assert "prefill 1 prompts" in line and "step rows=1" in line
    assert "positions: 1 live" in line  # the one stream, still generating


def test_a_request_whose_prompt_was_being_built_when_the_engine_closed_is_refused_not_left_waiting() -> None:
    """`close` ran while a request's prompt was built (in a worker thread for a long text): its
    sequence reached the drained scheduler afterwards and waited for ever, its stream with it."""
    eng = Engine.from_preset("tiny-random", device="cpu", max_batch_size=1)
    build = eng._sequence

    def build_then_close(request, sink):  # type: ignore[no-untyped-def]
        seq = build(request, sink)
        eng.close()  # the replica stops meanwhile
        return seq

    eng._sequence = build_then_close  # type: ignore[method-assign]
    long_text = "word " * (engine_module.INLINE_PROMPT_CHARS // 5 + 1)

    async def first_chunk():  # type: ignore[no-untyped-def]
        return await asyncio.wait_for(eng.stream(se.request(long_text, frames=2)).__anext__(), 10)

    with pytest.raises(RuntimeError, match="stopped"):
        asyncio.run(first_chunk())
    assert eng.loop.scheduler.counts()["waiting"] == 0


def test_a_failed_prefill_is_logged_with_the_request_ids_it_failed(caplog: pytest.LogCaptureFixture) -> None:
    """The engine's log line names the API's request ids, so an operator can find the requests (and
    their access-log lines) that a prefill failure ended."""
    eng = Engine.from_preset("tiny-random", device="cpu", max_batch_size=2)
    try:
        def fail(seqs):  # type: ignore[no-untyped-def]
            raise RuntimeError("out of memory on a long prompt")

        eng.loop.runner.start = fail
        request = dataclasses.replace(se.request("hello there", frames=2), request_id="req-prefill-1")
        with caplog.at_level("ERROR", logger="serve_app.engine.loop"), pytest.raises(RuntimeError):
            eng.generate_sync(request)
    finally:
        eng.close()
    failed = [r for r in caplog.records if r.getMessage().startswith("prefill failed")]
    assert len(failed) == 1 and failed[0].request_ids == ["req-prefill-1"]
    assert "req-prefill-1" in failed[0].getMessage()


def test_one_callers_queue_does_not_hold_back_another_callers_stream(one_thread: None) -> None:
    """One slot; a caller queues three streams, another caller one after them: the second caller's
    stream runs right after the first caller's running one, not behind its whole queue (callers take
    turns at a free slot), and the first caller's streams keep their order."""
    eng = Engine.from_preset(
        "tiny-random", device="cpu", max_batch_size=1, max_waiting=8, first_chunk_frames=1, chunk_frames=3
    )
    heavy = [dataclasses.replace(se.request(f"heavy {i}", frames=3, seed=i), caller="key_heavy") for i in range(3)]
    light = dataclasses.replace(se.request("light", frames=3, seed=9), caller="key_light")
    started: list[str] = []

    async def speak(req: GenerationRequest) -> None:
        stream = eng.stream(req)
        await stream.__anext__()
        started.append(req.text)  # one slot: streams start one at a time, in admission order
        async for _ in stream:
            pass

    async def main() -> None:
        await asyncio.gather(*(speak(req) for req in [*heavy, light]))

    try:
        asyncio.run(main())
    finally:
        eng.close()
    assert started == ["heavy 0", "light", "heavy 1", "heavy 2"]
