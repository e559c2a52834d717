"""HandleEngine (deployment handle → SpeechEngine), HandleState (→ sessions and rate limits) and
TTSModel's pass-through, without Ray running.

The fakes mimic what a `DeploymentHandle` returns (awaitable responses and async response
generators with `.cancel()`); Ray's real behaviour is covered by tests/test_e2e_ray.py.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from ray.exceptions import ActorDiedError, RayTaskError, WorkerCrashedError
from ray.serve.exceptions import BackPressureError, RayServeException

from serve_app.deploy.handle_engine import HandleEngine, ReplicaUnavailableError, awaited
from serve_app.deployments import TTSModel
from serve_app.engine.interface import SpeechEngine
from serve_app.engine.types import (
    AudioChunk,
    EngineOverloadedError,
    FinishReason,
    GenerationRequest,
    PromptTooLongError,
)
from serve_app.observability.stall_watchdog import LoopStallWatchdog


def _chunk(i: int, last: bool = False) -> AudioChunk:
    return AudioChunk(
        pcm=np.full(1920, i, np.float32),
        codes=np.full((1, 32), i, np.int64),
        frames=1,
        is_last=last,
        finish_reason=FinishReason.LENGTH if last else None,
    )


class FakeResponse:
    def __init__(self, result: Callable[[], Any]) -> None:
        self._result = result
        self.cancelled = False

    def __await__(self):
        async def run() -> Any:
            return await self._result()

        return run().__await__()

    def cancel(self) -> None:
        self.cancelled = True


class FakeStream:
    def __init__(self, chunks: list[AudioChunk], error: BaseException | None) -> None:
        self._chunks = chunks
        self._error = error
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[AudioChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[AudioChunk]:
        for chunk in self._chunks:
            yield chunk
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    """Answers every method with `outcome` (a value, an exception, or `...` for never)."""

    def __init__(self, outcome: Any = None, chunks: int = 3, stream_error: BaseException | None = None):
        self.outcome = outcome
        self.chunks = [_chunk(i, last=i == chunks - 1) for i in range(chunks)]
        self.stream_error = stream_error
        self.responses: list[Any] = []
        self.calls: list[tuple[str, tuple]] = []
        self.options_set: dict[str, Any] = {}

    def options(self, **options: Any) -> FakeHandle:
        self.options_set.update(options)
        return self

    def __getattr__(self, method: str) -> Any:
        handle = self

        class Method:
            def remote(self, *args: Any) -> Any:
                handle.calls.append((method, args))
                if method == "stream":
                    response: Any = FakeStream(handle.chunks, handle.stream_error)
                else:
                    response = FakeResponse(handle._answer)
                handle.responses.append(response)
                return response

        return Method()

    async def _answer(self) -> Any:
        if self.outcome is ...:
            await asyncio.Event().wait()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def _engine(handle: FakeHandle, **kw: Any) -> HandleEngine:
    return HandleEngine(handle, **kw)  # type: ignore[arg-type]


def test_adapter_satisfies_the_api_protocol() -> None:
    assert isinstance(_engine(FakeHandle()), SpeechEngine)


def test_calls_cross_ray_with_plain_pickle_both_ways() -> None:
    handle = FakeHandle()
    _engine(handle)
    assert handle.options_set == {"request_serialization": "pickle", "response_serialization": "pickle"}


def test_backpressure_becomes_overload_with_retry_after() -> None:
    async def scenario() -> None:
        engine = _engine(
            FakeHandle(BackPressureError(num_queued_requests=4, max_queued_requests=4, retry_after_s=3))
        )
        with pytest.raises(ReplicaUnavailableError) as info:
            await engine.generate(GenerationRequest(text="hi"))
        assert isinstance(info.value, EngineOverloadedError)  # the API answers these with 503
        assert info.value.retry_after_s == 3
        assert "backpressure" in str(info.value)
        await engine.check_health()  # a full queue: the replicas are up and busy, not unhealthy

    asyncio.run(scenario())


def test_a_dead_replica_fails_the_health_check() -> None:
    async def scenario() -> None:
        with pytest.raises(ReplicaUnavailableError):
            await _engine(FakeHandle(ActorDiedError())).check_health()

    asyncio.run(scenario())


def test_dead_replica_becomes_overload() -> None:
    async def scenario() -> None:
        engine = _engine(FakeHandle(ActorDiedError()))
        with pytest.raises(ReplicaUnavailableError, match="replica unavailable"):
            await engine.encode_audio(np.zeros(1920, np.float32))

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "error",
    [
        RayTaskError("stream", "tb", ActorDiedError()),  # a lost replica seen through a task error
        RayServeException("request failed because an upstream actor died"),
        WorkerCrashedError(),
    ],
    ids=["task-error-wrapping-actor-death", "serve-routing-error", "worker-crash"],
)
def test_ray_failures_become_overload(error: Exception) -> None:
    async def scenario() -> None:
        with pytest.raises(ReplicaUnavailableError) as info:
            await _engine(FakeHandle(error)).generate(GenerationRequest(text="hi"))
        assert info.value.__cause__ is error

    asyncio.run(scenario())


def test_engine_bug_through_ray_stays_an_engine_error() -> None:
    async def scenario() -> None:
        error = RayTaskError("generate", "tb", RuntimeError("shape mismatch")).as_instanceof_cause()
        with pytest.raises(RuntimeError) as info:
            await _engine(FakeHandle(error)).generate(GenerationRequest(text="hi"))
        assert info.value is error and not isinstance(info.value, EngineOverloadedError)

    asyncio.run(scenario())


def test_engine_errors_pass_through_unchanged() -> None:
    async def scenario() -> None:
        error = PromptTooLongError("text does not fit")
        with pytest.raises(PromptTooLongError) as info:
            await _engine(FakeHandle(error)).generate(GenerationRequest(text="x" * 10))
        assert info.value is error

    asyncio.run(scenario())


def test_health_check_times_out_instead_of_hanging() -> None:
    async def scenario() -> None:
        handle = FakeHandle(...)
        engine = _engine(handle, health_timeout_s=0.05)
        with pytest.raises(ReplicaUnavailableError, match="check_health"):
            await asyncio.wait_for(engine.check_health(), 2)
        assert handle.responses[-1].cancelled

    asyncio.run(scenario())


def test_a_probe_queued_behind_speech_asks_ray_whether_a_replica_runs() -> None:
    """The probe waits in the speech requests' queue: no answer in time is healthy where Ray's own
    health checks find a running replica, and not where they find none."""

    async def scenario() -> None:
        asked: list[bool] = []

        def ray_says(answer: bool | None):
            async def healthy() -> bool | None:
                asked.append(True)
                return answer

            return healthy

        busy = _engine(FakeHandle(...), health_timeout_s=0.05, deployment_health=ray_says(True))
        await asyncio.wait_for(busy.check_health(), 2)  # healthy: a replica runs, the queue is long
        for answer in (False, None):
            gone = _engine(FakeHandle(...), health_timeout_s=0.05, deployment_health=ray_says(answer))
            with pytest.raises(ReplicaUnavailableError, match="check_health"):
                await asyncio.wait_for(gone.check_health(), 2)
        dead = _engine(FakeHandle(ActorDiedError()), deployment_health=ray_says(True))
        with pytest.raises(ReplicaUnavailableError):  # a failed call is not a slow one: Ray not asked
            await dead.check_health()
        assert len(asked) == 3

    asyncio.run(scenario())


def test_stream_relays_chunks_in_order_without_cancelling() -> None:
    async def scenario() -> None:
        handle = FakeHandle(chunks=4)
        request = GenerationRequest(text="hello")
        got = [chunk async for chunk in _engine(handle).stream(request)]
        assert [int(c.codes[0, 0]) for c in got] == [0, 1, 2, 3]
        assert got[-1].is_last
        assert handle.calls == [("stream", (request,))]
        assert not handle.responses[0].cancelled

    asyncio.run(scenario())


def test_closing_the_stream_cancels_the_replica_call() -> None:
    async def scenario() -> None:
        handle = FakeHandle(chunks=5)
        stream = _engine(handle).stream(GenerationRequest(text="hello"))
        assert int((await stream.__anext__()).codes[0, 0]) == 0
        await stream.aclose()
        assert handle.responses[0].cancelled

    asyncio.run(scenario())


def test_stream_failure_mid_way_is_mapped() -> None:
    async def scenario() -> None:
        handle = FakeHandle(chunks=2, stream_error=ActorDiedError())
        stream = _engine(handle).stream(GenerationRequest(text="hello"))
        got = []
        with pytest.raises(ReplicaUnavailableError):
            async for chunk in stream:
                got.append(chunk)
        assert len(got) == 2

    asyncio.run(scenario())


class BrokenEngine:
    def __init__(self) -> None:
        self.closed_streams = 0

    async def check_health(self) -> None:
        raise RuntimeError("CUDA error: device-side assert triggered")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[AudioChunk]:
        try:
            for i in range(100):
                yield _chunk(i)
        finally:
            self.closed_streams += 1


def _model_with(engine: Any) -> Any:
    cls = TTSModel.func_or_class
    model = cls.__new__(cls)
    model._engine = engine
    model._watchdog = LoopStallWatchdog()
    return model


def test_model_health_check_fails_with_a_broken_engine() -> None:
    async def scenario() -> None:
        model = _model_with(BrokenEngine())
        with pytest.raises(RuntimeError, match="device-side assert"):
            await model.check_health()
        assert model._watchdog.running  # the first health check starts the stall watchdog
        await model._watchdog.stop()

    asyncio.run(scenario())


def test_model_stream_closes_the_engine_stream_when_cancelled() -> None:
    async def scenario() -> None:
        engine = BrokenEngine()
        stream = _model_with(engine).stream(GenerationRequest(text="hi"))
        await stream.__anext__()
        await stream.aclose()
        assert engine.closed_streams == 1

    asyncio.run(scenario())


def test_model_shutdown_closes_the_engine() -> None:
    class ClosableEngine:
        closed = False

        def close(self) -> None:
            self.closed = True

    engine = ClosableEngine()
    _model_with(engine).__del__()  # Ray calls it once the replica has drained
    assert engine.closed


# ---------------------------------------------------------------------------------------------------
# HandleState: sessions and rate limits through the SharedState deployment's handle
# ---------------------------------------------------------------------------------------------------
def _state(handle: FakeHandle, **kw: Any) -> Any:
    from serve_app.deploy.handle_state import HandleState

    return HandleState(handle, lease_s=30.0, per_minute=60, burst=10, **kw)  # type: ignore[arg-type]


def test_state_adapter_satisfies_both_protocols_and_sends_the_rate_with_each_token() -> None:
    from serve_app.api.state import RateLimiter, SessionStore

    async def scenario() -> None:
        handle = FakeHandle([(0.0, 9.0)])  # allowed, 9 tokens left
        state = _state(handle)
        assert isinstance(state, SessionStore) and isinstance(state, RateLimiter)
        assert await state.acquire("key_abc") == 0.0
        assert handle.calls == [("acquire_many", (["key_abc"], 60, 10))]  # the ingress's rate, not the state's

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "failure", [ActorDiedError(), RayTaskError("acquire", "tb", ActorDiedError()), RayServeException("gone")]
)
def test_a_lost_state_replica_is_state_unavailable(failure: BaseException) -> None:
    from serve_app.api.state import StateUnavailableError

    async def scenario() -> None:
        with pytest.raises(StateUnavailableError, match="shared state replica unavailable"):
            await _state(FakeHandle(failure)).acquire("k")
        with pytest.raises(StateUnavailableError):
            await _state(FakeHandle(failure)).begin_turn("s")

    asyncio.run(scenario())


class LimiterHandle:
    """`acquire_many` over one real token bucket, as `SharedState` answers it; each call waits for
    `gate` (when set) so a test can hold a call in flight."""

    def __init__(self, burst: int, failures: int = 0) -> None:
        from serve_app.api.auth import TokenBucketLimiter

        self.limiter = TokenBucketLimiter(60, burst, clock=lambda: 0.0)  # no refill during a test
        self.calls: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.failures = failures

    @property
    def acquire_many(self) -> Any:
        handle = self

        class Method:
            def remote(self, clients: list[str], per_minute: int, burst: int) -> FakeResponse:
                handle.calls.append(list(clients))

                async def answer() -> list[tuple[float, float]]:
                    if handle.gate is not None:
                        await handle.gate.wait()
                    if handle.failures:
                        handle.failures -= 1
                        raise ActorDiedError()
                    return [handle.limiter.take(c) for c in clients]

                return FakeResponse(answer)

        return Method()


def test_a_burst_of_token_requests_is_one_call_with_the_decisions_of_one_call_each() -> None:
    async def scenario() -> None:
        handle = LimiterHandle(burst=10)
        state = _state(handle)  # type: ignore[arg-type]
        clients = [f"key_{i % 2}" for i in range(64)]
        waits = await asyncio.gather(*(state.acquire(c) for c in clients))
        assert handle.calls == [clients]  # one call, in arrival order
        for key in ("key_0", "key_1"):  # each key's bucket of 10: its first 10 requests pass
            mine = [w for c, w in zip(clients, waits) if c == key]
            assert mine[:10] == [0.0] * 10 and all(w > 0 for w in mine[10:])

    asyncio.run(scenario())


def test_token_requests_made_while_a_call_is_in_flight_go_in_the_next_call() -> None:
    async def scenario() -> None:
        handle = LimiterHandle(burst=100)
        handle.gate = asyncio.Event()
        state = _state(handle)  # type: ignore[arg-type]
        first = asyncio.create_task(state.acquire("a"))
        await asyncio.sleep(0.01)
        assert handle.calls == [["a"]]
        later = [asyncio.create_task(state.acquire(c)) for c in "bcdef"]
        await asyncio.sleep(0.01)
        assert handle.calls == [["a"]]  # one call in flight at a time
        handle.gate.set()
        assert await asyncio.gather(first, *later) == [0.0] * 6
        assert handle.calls == [["a"], list("bcdef")]

    asyncio.run(scenario())


def test_a_client_with_credit_is_admitted_without_waiting_and_its_token_is_still_taken() -> None:
    from serve_app.deploy.handle_state import credit_reserve

    async def scenario() -> None:
        handle = LimiterHandle(burst=12)
        state = _state(handle)  # type: ignore[arg-type]
        assert credit_reserve(12) == 3.0
        assert await state.acquire("k") == 0.0  # no credit yet: the bucket's answer (11 left)
        handle.gate = asyncio.Event()  # the shared state stops answering
        on_credit = [await asyncio.wait_for(state.acquire("k"), 0.1) for _ in range(8)]
        assert on_credit == [0.0] * 8  # the credit of 11 spent without an answer, down to the reserve of 3
        near_limit = asyncio.create_task(state.acquire("k"))  # within the reserve: it waits
        await asyncio.sleep(0.02)
        assert not near_limit.done()
        handle.gate.set()
        assert await near_limit == 0.0  # the bucket still had tokens: the reserve is not refused, only waited for
        assert sum(len(call) for call in handle.calls) == 10  # every request took its token
        assert await state.acquire("other") == 0.0  # credit is per client

    asyncio.run(scenario())


def test_near_its_limit_a_client_waits_for_the_bucket_so_two_replicas_admit_only_the_burst() -> None:
    """Two ingress replicas over one bucket, a client taking turns between them: its credit on one
    does not know of its takes on the other, but within the reserve every request asks the bucket."""

    async def scenario() -> None:
        handle = LimiterHandle(burst=20)
        first, second = _state(handle), _state(handle)  # type: ignore[arg-type]
        waits = []
        for i in range(40):
            waits.append(await (first if i % 2 else second).acquire("k"))
            await asyncio.sleep(0)  # the request's own work: the token calls of those on credit go out
        assert waits[:20] == [0.0] * 20 and all(wait > 0 for wait in waits[20:]), waits

    asyncio.run(scenario())


def test_credit_lasts_its_time_to_live_and_a_failed_call_leaves_none(monkeypatch: pytest.MonkeyPatch) -> None:
    from serve_app.deploy import handle_state

    async def scenario() -> None:
        handle = LimiterHandle(burst=10)
        state = _state(handle)  # type: ignore[arg-type]
        await state.acquire("k")
        monkeypatch.setattr(handle_state, "CREDIT_TTL_S", 0.0)  # the credit is stale
        handle.gate = asyncio.Event()
        stale = asyncio.create_task(state.acquire("k"))
        await asyncio.sleep(0.02)
        assert not stale.done()  # waits for the bucket
        handle.gate.set()
        assert await stale == 0.0
        monkeypatch.setattr(handle_state, "CREDIT_TTL_S", 60.0)
        handle.failures = 1
        assert await state.acquire("k") == 0.0  # on credit; the call taking its token fails
        await asyncio.sleep(0.02)
        handle.gate = asyncio.Event()
        after = asyncio.create_task(state.acquire("k"))
        await asyncio.sleep(0.02)
        assert not after.done()  # a failed call leaves no credit: it waits for the bucket
        handle.gate.set()
        assert await after == 0.0

    asyncio.run(scenario())


def test_a_failed_token_call_answers_each_of_its_requests_and_the_next_call_is_made() -> None:
    from serve_app.api.state import StateUnavailableError

    async def scenario() -> None:
        handle = LimiterHandle(burst=10, failures=1)
        state = _state(handle)  # type: ignore[arg-type]
        results = await asyncio.gather(*(state.acquire("k") for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, StateUnavailableError) for r in results)
        assert await state.acquire("k") == 0.0  # the replica is back: served, not stuck
        assert handle.calls == [["k"] * 3, ["k"]]

    asyncio.run(scenario())


def test_a_token_request_whose_client_left_does_not_stop_the_others() -> None:
    async def scenario() -> None:
        handle = LimiterHandle(burst=10)
        handle.gate = asyncio.Event()
        state = _state(handle)  # type: ignore[arg-type]
        gone, stays = asyncio.create_task(state.acquire("a")), asyncio.create_task(state.acquire("b"))
        await asyncio.sleep(0.01)
        gone.cancel()
        handle.gate.set()
        assert await stays == 0.0
        assert gone.cancelled()

    asyncio.run(scenario())


def test_a_silent_state_replica_times_out_and_its_call_is_cancelled() -> None:
    from serve_app.api.state import StateUnavailableError

    async def scenario() -> None:
        handle = FakeHandle(...)
        with pytest.raises(StateUnavailableError, match="did not answer reset in 0.05 s"):
            await _state(handle, timeout_s=0.05).reset("s")
        assert handle.responses[0].cancelled

    asyncio.run(scenario())


def test_an_unavailable_rate_limiter_is_a_503_with_retry_after(tmp_path) -> None:
    """Through the API: the limiter's failure is answered, not a 500 and not a free pass."""
    from fastapi.testclient import TestClient

    from serve_app.api.app import create_app
    from serve_app.api.settings import ApiSettings
    from serve_app.api.state import StateBackends
    from tests.support_api import FakeEngine

    state = _state(FakeHandle(ActorDiedError()))
    app = create_app(FakeEngine(), ApiSettings(voices_dir=tmp_path), StateBackends(state, state))
    client = TestClient(app)
    speak = client.post("/speak", json={"text": "Hi."})
    assert speak.status_code == 503 and int(speak.headers["retry-after"]) >= 1
    assert "rate limiter is unavailable" in speak.json()["detail"]
    assert client.get("/health").status_code == 200  # open paths take no token
    turn = TestClient(create_app(FakeEngine(), ApiSettings(voices_dir=tmp_path), StateBackends(state, None)))
    r = turn.post("/contextual_speak", json={"text": "Hi.", "session_id": "s"})
    assert r.status_code == 503 and "session state unavailable" in r.json()["detail"]


_SERVED_REQUEST: contextvars.ContextVar[str | None] = contextvars.ContextVar("served_request", default=None)
"""The request a coroutine serves, as Ray Serve's request context says it on a replica."""


class ChildCancellingHandle(LimiterHandle):
    """Ray Serve's way with child calls: a handle call made while serving a request belongs to that
    request, and when the request is cancelled (its client left) the call is cancelled too, its
    await raising `asyncio.CancelledError` (ray/serve/_private/replica.py `_on_request_cancelled`)."""

    def __init__(self, burst: int) -> None:
        super().__init__(burst)
        self.children: dict[str | None, list[asyncio.Future[Any]]] = {}

    @property
    def acquire_many(self) -> Any:
        handle, inner = self, super().acquire_many

        class Method:
            def remote(self, clients: list[str], per_minute: int, burst: int) -> FakeResponse:
                call = asyncio.ensure_future(awaited(inner.remote(clients, per_minute, burst)))
                handle.children.setdefault(_SERVED_REQUEST.get(), []).append(call)
                return FakeResponse(lambda: call)

        return Method()

    def cancel_request(self, request: str) -> None:
        for call in self.children.get(request, []):
            call.cancel()


def test_a_token_call_is_not_cancelled_with_the_request_that_sent_it() -> None:
    """The first request of a burst sends the burst's tokens; its client leaving must not leave the
    other requests of the burst waiting for ever."""

    async def scenario() -> None:
        handle = ChildCancellingHandle(burst=10)
        handle.gate = asyncio.Event()
        state = _state(handle)  # type: ignore[arg-type]

        async def request(name: str) -> float:
            _SERVED_REQUEST.set(name)
            return await state.acquire(name)

        gone, stays = asyncio.create_task(request("a")), asyncio.create_task(request("b"))
        await asyncio.sleep(0.01)
        assert handle.calls == [["a", "b"]]
        gone.cancel()
        handle.cancel_request("a")  # what Ray does to the calls made under a cancelled request
        handle.gate.set()
        assert await asyncio.wait_for(stays, 2.0) == 0.0

    asyncio.run(scenario())
