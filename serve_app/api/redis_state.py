"""Sessions and rate limits in Redis (`redis_url`): state that outlives every replica of the service.

Keys live under `csm:`. A session is a list of encoded turns (the last `session_context_turns`),
expiring `session_ttl_s` after its last use; a sorted set of last-use times (Redis's clock, in
microseconds) caps the number of sessions at `max_sessions`, dropping the least recently used. A
turn's lease is a key set only if absent, with the lease as its expiry. Each token bucket is a hash updated by one Lua script against
Redis's clock, so every replica draws from the same bucket; an idle bucket expires once full.

Turns are stored as JSON plus the raw codes, never pickled: whatever is in Redis is read as data.
Connection failures become `StateUnavailableError` (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from serve_app.api.settings import ApiSettings
from serve_app.api.state import StateBackends, StateUnavailableError, TurnLease
from serve_app.engine.types import Segment

__all__ = ["RedisRateLimiter", "RedisSessions", "decode_turn", "encode_turn", "redis_backends"]

T = TypeVar("T")
PREFIX = "csm:"
POLL_S = 0.05
"""How often a turn waiting for its session looks again."""

_NOW_US = """
local function now_us()  -- microseconds: calls a millisecond apart must not tie in the LRU order
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""

_BEGIN = _NOW_US + """
-- KEYS: lease, turns, index; ARGV: lease id, lease ms, ttl ms, max sessions, session id, key prefix
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) == false then return false end
local now, ttl = now_us(), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - ttl * 1000)
redis.call('ZADD', KEYS[3], now, ARGV[5])
local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[4])
if excess > 0 then  -- the least recently used sessions go: ZPOPMIN answers member, score, ...
  local popped = redis.call('ZPOPMIN', KEYS[3], excess)
  for i = 1, #popped, 2 do redis.call('DEL', ARGV[6] .. 'session:' .. popped[i] .. ':turns') end
end
redis.call('PEXPIRE', KEYS[2], ttl)
return redis.call('LRANGE', KEYS[2], 0, -1)
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_END = _NOW_US + """
-- KEYS: lease, turns, index; ARGV: lease id, turns kept, ttl ms, session id, [turn]
-- The turn is recorded only while the lease is still this turn's (not after a reset or a lost lease).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.call('LLEN', KEYS[2]) end
if ARGV[5] then
  redis.call('RPUSH', KEYS[2], ARGV[5])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], now_us(), ARGV[4])
redis.call('DEL', KEYS[1])
return redis.call('LLEN', KEYS[2])
"""

_BUCKET = """
-- KEYS: bucket; ARGV: rate per s, burst. Returns the wait in microseconds (0: allowed).
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return math.ceil(wait * 1e6)
"""


def encode_turn(turn: Segment) -> bytes:
    """A turn as a JSON header, a NUL, then its codes' raw bytes."""
    if turn.codes is None:
        raise ValueError("session turns are kept as codes")
    codes = np.ascontiguousarray(turn.codes)
    header = {"text": turn.text, "speaker": turn.speaker, "dtype": codes.dtype.str, "shape": codes.shape}
    return json.dumps(header).encode() + b"\0" + codes.tobytes()


def decode_turn(data: bytes) -> Segment:
    header, _, raw = data.partition(b"\0")
    meta = json.loads(header)
    codes = np.frombuffer(raw, dtype=np.dtype(meta["dtype"])).reshape(meta["shape"]).copy()
    return Segment(text=meta["text"], speaker=int(meta["speaker"]), codes=codes)


async def _guarded(call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StateUnavailableError(f"redis unreachable: {exc}") from exc


class RedisSessions:
    """`SessionStore` in Redis, bounded like `InMemorySessions`."""

    def __init__(
        self, client: redis.Redis, max_sessions: int, ttl_s: float, context_turns: int, lease_s: float
    ) -> None:
        self._redis = client
        self._max_sessions = max_sessions
        self._ttl_ms = int(ttl_s * 1000)
        self._context_turns = context_turns
        self.lease_s = lease_s
        self._begin = client.register_script(_BEGIN)
        self._renew = client.register_script(_RENEW)
        self._end = client.register_script(_END)

    @staticmethod
    def _keys(session_id: str) -> list[str]:
        return [f"{PREFIX}session:{session_id}:lease", f"{PREFIX}session:{session_id}:turns", f"{PREFIX}sessions"]

    async def begin_turn(self, session_id: str) -> TurnLease:
        lease_id = uuid.uuid4().hex
        args = [lease_id, int(self.lease_s * 1000), self._ttl_ms, self._max_sessions, session_id, PREFIX]
        while True:
            turns = await _guarded(lambda: self._begin(keys=self._keys(session_id), args=args))
            if turns is not None:
                return TurnLease(lease_id, [decode_turn(t) for t in turns])
            await asyncio.sleep(POLL_S)

    async def renew_turn(self, session_id: str, lease_id: str) -> bool:
        keys = self._keys(session_id)[:1]
        return bool(await _guarded(lambda: self._renew(keys=keys, args=[lease_id, int(self.lease_s * 1000)])))

    async def end_turn(self, session_id: str, lease_id: str, turn: Segment | None) -> int:
        args: list[Any] = [lease_id, self._context_turns, self._ttl_ms, session_id]
        if turn is not None:
            args.append(encode_turn(turn))
        return int(await _guarded(lambda: self._end(keys=self._keys(session_id), args=args)))

    async def reset(self, session_id: str) -> bool:
        lease, turns, index = self._keys(session_id)

        async def drop() -> bool:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(turns)
                pipe.zrem(index, session_id)
                pipe.delete(lease)  # a turn in progress then records nothing when it ends
                existed, _, _ = await pipe.execute()
            return bool(existed)

        return await _guarded(drop)


class RedisRateLimiter:
    """`RateLimiter` in Redis: one token bucket per client, shared by every replica."""

    def __init__(self, client: redis.Redis, per_minute: int, burst: int) -> None:
        if per_minute <= 0 or burst <= 0:
            raise ValueError("per_minute and burst must be positive")
        self.per_minute = per_minute
        self._burst = burst
        self._bucket = client.register_script(_BUCKET)

    async def acquire(self, client: str) -> float:
        keys = [f"{PREFIX}bucket:{client}"]
        micros = await _guarded(lambda: self._bucket(keys=keys, args=[self.per_minute / 60.0, self._burst]))
        return int(micros) / 1e6


def redis_backends(settings: ApiSettings) -> StateBackends:
    """Both backends over one connection pool to `settings.redis_url`."""
    assert settings.redis_url is not None
    client = redis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_timeout=5.0, socket_connect_timeout=5.0
    )
    sessions = RedisSessions(
        client, settings.max_sessions, settings.session_ttl_s, settings.session_context_turns,
        settings.session_lease_s,
    )
    limiter = (
        RedisRateLimiter(client, settings.rate_limit_per_minute, settings.burst())
        if settings.rate_limit_per_minute
        else None
    )
    return StateBackends(sessions, limiter)
