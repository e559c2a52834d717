"""Session and rate-limit backends, one contract for all: in this process's memory and in a real
Redis server. Bounded (LRU, idle TTL, last N turns), one turn of a session at a time whichever
replica asks, a dead holder's lease expires, and a token bucket shared by every caller."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
import pytest

from serve_app.api.sessions import session_turn
from serve_app.api.settings import ApiSettings
from serve_app.api.state import (
    RateLimiter,
    SessionStore,
    StateBackends,
    StateUnavailableError,
    local_backends,
)
from serve_app.engine.types import Segment
from tests.support_redis import redis_url  # noqa: F401 - the session fixture

BACKENDS = ["memory", "redis"]


def _segment(text: str, frames: int = 3) -> Segment:
    codes = (np.arange(frames * 32, dtype=np.int64).reshape(frames, 32) + len(text)) % 2048
    return Segment(text=text, speaker=len(text) % 2, codes=codes)


@pytest.fixture
def make_backends(request: pytest.FixtureRequest) -> Callable[..., StateBackends]:
    """Builds backends of the parametrized kind from ApiSettings fields (Redis flushed first)."""
    kind = request.param
    url = request.getfixturevalue("redis_url") if kind == "redis" else None
    if url is not None:
        import redis

        redis.Redis.from_url(url).flushdb()

    def build(**fields: Any) -> StateBackends:
        return local_backends(ApiSettings(**fields, **({"redis_url": url} if url else {})))

    return build


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _turn(store: SessionStore, session_id: str, text: str) -> int:
    async with session_turn(store, session_id) as turn:
        turn.record(_segment(text))
    return turn.turns_kept


async def _context(store: SessionStore, session_id: str) -> list[str]:
    lease = await store.begin_turn(session_id)
    await store.end_turn(session_id, lease.lease_id, None)
    return [segment.text for segment in lease.context]


@pytest.mark.parametrize("make_backends", BACKENDS, indirect=True)
def test_a_session_keeps_its_last_turns_as_codes(make_backends) -> None:
    async def scenario() -> None:
        store = make_backends(session_context_turns=2).sessions
        assert isinstance(store, SessionStore)
        assert [await _turn(store, "s", t) for t in ("one", "two", "three")] == [1, 2, 2]
        lease = await store.begin_turn("s")
        assert [s.text for s in lease.context] == ["two", "three"]
        np.testing.assert_array_equal(lease.context[1].codes, _segment("three").codes)
        assert lease.context[1].speaker == _segment("three").speaker
        assert await store.end_turn("s", lease.lease_id, None) == 2  # a failed turn adds nothing
        assert await _context(store, "other") == []
        assert await store.reset("s") is True
        assert await store.reset("s") is False
        assert await _context(store, "s") == []

    run(scenario())


@pytest.mark.parametrize("make_backends", BACKENDS, indirect=True)
def test_sessions_are_bounded_by_count_lru_first_and_by_idle_time(make_backends) -> None:
    async def scenario() -> None:
        store = make_backends(max_sessions=2, session_ttl_s=1.5).sessions
        await _turn(store, "a", "a1")
        await _turn(store, "b", "b1")
        await _turn(store, "a", "a2")  # a is now the most recent: c evicts b
        await _turn(store, "c", "c1")
        assert await _context(store, "a") == ["a1", "a2"]
        assert await _context(store, "b") == []
        await asyncio.sleep(1.8)
        assert await _context(store, "c") == []  # idle past the TTL: forgotten

    run(scenario())


@pytest.mark.parametrize("make_backends", BACKENDS, indirect=True)
def test_turns_of_one_session_run_one_at_a_time(make_backends) -> None:
    """Two callers (two replicas) on one session: the second sees the first's turn as context."""

    async def scenario() -> None:
        store = make_backends().sessions
        ran: list[str] = []
        contexts: list[list[str]] = []
        running = 0

        async def caller(text: str) -> None:
            nonlocal running
            async with session_turn(store, "shared") as turn:
                running += 1
                assert running == 1
                contexts.append([s.text for s in turn.context])
                await asyncio.sleep(0.2)
                running -= 1
                ran.append(text)
                turn.record(_segment(text))

        await asyncio.gather(caller("first"), caller("second"), caller("third"))
        assert contexts == [[], ran[:1], ran[:2]]  # each turn heard every earlier one
        assert await _context(store, "shared") == ran

    run(scenario())


@pytest.mark.parametrize("make_backends", BACKENDS, indirect=True)
def test_a_dead_holders_lease_expires_and_a_live_one_is_renewed(make_backends) -> None:
    async def scenario() -> None:
        # A lease long enough that a loaded two-core machine's stalls (a renewal comes every third of
        # it) do not let a live one lapse: with 0.6 s one lapsed once in a full run.
        store = make_backends(session_lease_s=1.2).sessions
        await store.begin_turn("s")  # never ended: its holder died
        started = time.monotonic()
        lease = await store.begin_turn("s")
        assert 0.9 < time.monotonic() - started < 4.0
        await store.end_turn("s", lease.lease_id, _segment("after"))

        async with session_turn(store, "s") as turn:
            await asyncio.sleep(2.5)  # longer than the lease: kept alive by renewal
            waiter = asyncio.ensure_future(store.begin_turn("s"))
            await asyncio.sleep(0.2)
            assert not waiter.done()
            turn.record(_segment("long"))
        next_lease = await asyncio.wait_for(waiter, 2.0)
        assert [s.text for s in next_lease.context] == ["after", "long"]

    run(scenario())


def test_a_turn_ends_outside_its_requests_context() -> None:
    """Ray Serve cancels the handle calls a cancelled request made (found through the request's
    context variable): the call that ends a turn is started in a context of its own, so a turn whose
    client left still frees its session."""
    import contextvars

    request = contextvars.ContextVar("request", default=None)
    seen: list[object] = []

    class Store:
        lease_s = 30.0

        async def begin_turn(self, session_id: str):
            from serve_app.api.state import TurnLease

            return TurnLease("lease", [])

        async def renew_turn(self, session_id: str, lease_id: str) -> bool:
            return True

        async def end_turn(self, session_id: str, lease_id: str, turn) -> int:
            seen.append(request.get())
            return 0

    async def scenario() -> None:
        request.set("parent-request")
        async with session_turn(Store(), "s"):
            pass

    run(scenario())
    assert seen == [None]


@pytest.mark.parametrize("make_backends", BACKENDS, indirect=True)
def test_a_failed_or_cancelled_turn_records_nothing_and_frees_the_session(make_backends) -> None:
    async def scenario() -> None:
        store = make_backends().sessions
        with pytest.raises(RuntimeError):
            async with session_turn(store, "s") as turn:
                turn.record(_segment("lost"))
                raise RuntimeError("generation failed")

        async def slow() -> None:
            async with session_turn(store, "s"):
                await asyncio.sleep(30)

        task = asyncio.ensure_future(slow())
        await asyncio.sleep(0.1)
        task.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.monotonic()
        assert await asyncio.wait_for(_context(store, "s"), 1.0) == []
        assert time.monotonic() - started < 0.5

    run(scenario())


@pytest.mark.parametrize("make_backends", BACKENDS, indirect=True)
def test_a_reset_during_a_turn_keeps_that_turn_out_of_the_new_session(make_backends) -> None:
    """A call ends (DELETE /sessions/{id}) while its last turn is still generating: the next call on
    the same id must start empty, not hear the old call's turn."""

    async def scenario() -> None:
        store = make_backends().sessions
        await _turn(store, "call", "before")
        lease = await store.begin_turn("call")
        assert await store.reset("call")
        assert await store.end_turn("call", lease.lease_id, _segment("in flight")) == 0
        assert await asyncio.wait_for(_context(store, "call"), 1.0) == []

    run(scenario())


@pytest.mark.parametrize("make_backends", BACKENDS, indirect=True)
def test_the_token_bucket_refills_per_client(make_backends) -> None:
    async def scenario() -> None:
        limiter = make_backends(rate_limit_per_minute=60, rate_limit_burst=3).limiter
        assert isinstance(limiter, RateLimiter) and limiter.per_minute == 60
        waits = [await limiter.acquire("client-a") for _ in range(3)]
        assert waits == [0.0, 0.0, 0.0]
        wait = await limiter.acquire("client-a")
        assert 0.5 < wait <= 1.0
        assert await limiter.acquire("client-b") == 0.0  # buckets are per client
        await asyncio.sleep(1.1)
        assert await limiter.acquire("client-a") == 0.0  # a token came back at 1 per second

    run(scenario())


def test_rate_limits_off_means_no_limiter() -> None:
    assert local_backends(ApiSettings()).limiter is None


def test_redis_buckets_and_sessions_are_the_same_for_two_replicas(redis_url) -> None:  # noqa: F811
    """Two apps' backends over one Redis: one budget and one session between them."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()

    async def scenario() -> None:
        settings = ApiSettings(redis_url=redis_url, rate_limit_per_minute=6, rate_limit_burst=4)
        replicas = [local_backends(settings), local_backends(settings)]
        allowed = [await replicas[i % 2].limiter.acquire("k") == 0.0 for i in range(8)]
        assert allowed == [True] * 4 + [False] * 4
        assert await _turn(replicas[0].sessions, "s", "on zero") == 1
        assert await _turn(replicas[1].sessions, "s", "on one") == 2
        assert await _context(replicas[0].sessions, "s") == ["on zero", "on one"]

    run(scenario())


def test_an_unreachable_redis_is_state_unavailable() -> None:
    async def scenario() -> None:
        state = local_backends(
            ApiSettings(redis_url="redis://127.0.0.1:1/0", rate_limit_per_minute=60)
        )
        with pytest.raises(StateUnavailableError, match="redis unreachable"):
            await state.sessions.begin_turn("s")
        with pytest.raises(StateUnavailableError):
            await state.limiter.acquire("k")

    run(scenario())


def test_two_apps_over_one_redis_serve_one_session_and_one_budget(redis_url, tmp_path) -> None:  # noqa: F811
    """Two servers (as two replicas would be) over real HTTP, configured only with `redis_url`."""
    import redis

    from serve_app.api.app import create_app
    from tests.support_tools import ToneEngine, serve_http

    redis.Redis.from_url(redis_url).flushdb()
    settings = ApiSettings(voices_dir=tmp_path, redis_url=redis_url, rate_limit_per_minute=6, rate_limit_burst=6)
    body = {"text": "Next line.", "session_id": "talk", "max_duration_ms": 240}
    with serve_http(create_app(ToneEngine(), settings)) as one, serve_http(create_app(ToneEngine(), settings)) as two:
        turns = [httpx.post(f"{url}/contextual_speak", json=body, timeout=30) for url in (one, two, one, two)]
        assert [r.status_code for r in turns] == [200] * 4
        assert [r.headers["x-session-turns"] for r in turns] == ["1", "2", "3", "4"]
        assert httpx.delete(f"{two}/sessions/talk", timeout=30).status_code == 204  # the 5th token
        statuses = [httpx.get(f"{url}/v1/models", timeout=30).status_code for url in (one, two, one)]
        assert statuses == [200, 429, 429]  # 6 tokens for both servers together, not 6 each


@pytest.mark.parametrize("make_backends", BACKENDS, indirect=True)
def test_a_session_dropped_by_the_lru_during_a_turn_keeps_the_turn_and_its_order(make_backends) -> None:
    """More sessions than `max_sessions` are used while one session's turn runs: that turn is still
    recorded, its next turn waits for it (no two at once) and starts as soon as it ends."""

    async def scenario() -> None:
        store = make_backends(max_sessions=2).sessions
        await _turn(store, "s", "before")
        running = 0

        async def caller(text: str, seconds: float) -> float:
            nonlocal running
            async with session_turn(store, "s") as turn:
                running += 1
                assert running == 1
                await asyncio.sleep(seconds)
                running -= 1
                turn.record(_segment(text))
            return time.monotonic()

        first = asyncio.ensure_future(caller("during", 0.3))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(caller("next", 0.0))
        await asyncio.sleep(0.05)
        for other in ("a", "b", "c"):  # the LRU drops "s" meanwhile
            await _turn(store, other, other)
        ended = await asyncio.wait_for(first, 5.0)
        assert await asyncio.wait_for(second, 5.0) - ended < 1.0  # not after the 30 s lease
        assert (await _context(store, "s"))[-2:] == ["during", "next"]  # "before" may have gone

    run(scenario())
