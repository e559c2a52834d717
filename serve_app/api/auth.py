"""Optional API keys (`Authorization: Bearer <key>`) and per-key rate limits.

Both are off unless configured (`ApiSettings.api_keys` / `api_keys_file`, `rate_limit_per_minute`).
Keys are compared in constant time and never logged: requests are attributed to a key by its
fingerprint (`key_id`), which the access log and the rate limiter use. Without keys, a rate limit
applies per client address. The limiter is any `RateLimiter` (serve_app.api.state): in this process,
or shared by every ingress replica, so the configured rate holds for the whole service.

Pure ASGI, placed outside the body limit, so an unauthenticated or throttled client is answered
before its body is read. WebSocket handshakes are checked the same way (a key may also come as
`?api_key=`, since browsers cannot set headers on a WebSocket); each connection counts as one request.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextvars import ContextVar

from starlette.datastructures import Headers, QueryParams
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.api.errors import error_body
from serve_app.api.state import RateLimiter, StateUnavailableError

__all__ = ["CALLER", "ApiKeyRing", "AuthMiddleware", "TokenBucketLimiter", "calling_key", "key_id", "key_of"]

OPEN_PATHS = ("/health", "/metrics", "/docs", "/redoc", "/openapi.json", "/favicon.ico")
"""Paths served without a key: probes, scraping, documentation (the playground page is open too,
its API calls are not)."""


CALLER: ContextVar[str | None] = ContextVar("csm_serve_caller", default=None)
"""Who the request being served came from (its `client_id`: an API key's id, or the client's
address), set by `AuthMiddleware` for the request's whole handling: the synthesizer puts it on the
engine's requests, whose scheduler shares slots among callers. None where the middleware is off (no
keys, no rate limit): every request is then one anonymous caller's."""


def key_id(key: str) -> str:
    """A stable, non-reversible name for a key, safe to log."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def key_of(scope: Scope) -> str | None:
    """The id of the API key a request came with (`key_id`), or None where the server takes no keys:
    what the caller's own data (saved voices, sessions, cached answers) is filed under."""
    return _as_key_id(scope.get("state", {}).get("client_id"))


def calling_key() -> str | None:
    """`key_of` the request being served, from `CALLER` (for code that has no request at hand)."""
    return _as_key_id(CALLER.get())


def _as_key_id(client: object) -> str | None:
    return client if isinstance(client, str) and client.startswith("key_") else None


class ApiKeyRing:
    """The accepted keys; `match` answers the key's id or None."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [(key.encode(), key_id(key)) for key in keys]
        if not self._keys:
            raise ValueError("an API key ring needs at least one key")

    def match(self, presented: str) -> str | None:
        candidate = presented.encode()
        found = None
        for key, ident in self._keys:  # no early exit: timing says nothing about which key matched
            if hmac.compare_digest(candidate, key):
                found = ident
        return found


class TokenBucketLimiter:
    """`per_minute` requests a minute per client, in bursts of up to `burst`.

    Buckets are kept for the most recently seen `max_clients` clients (LRU), so a flood of distinct
    addresses cannot grow memory without bound."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute <= 0 or burst <= 0:
            raise ValueError("per_minute and burst must be positive")
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def acquire(self, client: str) -> float:
        """Take one token for `client`: 0.0 when allowed, else the seconds until one is available."""
        return self.take(client)[0]

    def take(self, client: str) -> tuple[float, float]:
        """`acquire`'s answer, and the tokens `client` has left after it."""
        now = self._clock()
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait, tokens


class AuthMiddleware:
    """401 without a valid key (when keys are configured), 429 + Retry-After over the rate limit."""

    def __init__(
        self,
        app: ASGIApp,
        keys: ApiKeyRing | None,
        limiter: RateLimiter | None,
        open_paths: tuple[str, ...] = OPEN_PATHS,
    ) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.open_paths = open_paths

    def _is_open(self, path: str) -> bool:
        return path == "/" or path.startswith("/playground") or path in self.open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        client = f"addr_{scope['client'][0]}" if scope.get("client") else "addr_unknown"
        if self.keys is not None:
            ident = self.keys.match(_presented_key(scope))
            if ident is None:
                detail = "a valid API key is required: send 'Authorization: Bearer <key>'"
                response = JSONResponse(
                    error_body(scope["path"], 401, detail), 401, {"WWW-Authenticate": 'Bearer realm="csm-serve"'}
                )
                await _refuse(response, scope, receive, send)
                return
            client = ident
        scope.setdefault("state", {})["client_id"] = client
        if self.limiter is not None:
            asked = time.perf_counter()
            try:
                wait = await self.limiter.acquire(client)
            except StateUnavailableError as exc:
                detail = f"the rate limiter is unavailable, retry later ({exc})"
                retry = str(max(1, math.ceil(exc.retry_after_s)))
                await JSONResponse(error_body(scope["path"], 503, detail), 503, {"Retry-After": retry})(
                    scope, receive, send
                )
                return
            # How long the request waited for its token (a hop to the shared state where there is
            # one): the middleware adds it to the response's Server-Timing as `limit`.
            scope["state"]["limit_ms"] = (time.perf_counter() - asked) * 1000
            if wait > 0:
                per_minute = self.limiter.per_minute
                detail = f"rate limit of {per_minute} requests per minute exceeded; retry after {wait:.1f} s"
                retry = str(max(1, math.ceil(wait)))
                response = JSONResponse(error_body(scope["path"], 429, detail), 429, {"Retry-After": retry})
                await _refuse(response, scope, receive, send)
                return
        token = CALLER.set(client)
        try:
            await self.app(scope, receive, send)
        finally:
            CALLER.reset(token)


def _presented_key(scope: Scope) -> str:
    """The bearer token; a WebSocket may instead carry it as `?api_key=` (browsers cannot set headers
    on one)."""
    scheme, _, presented = Headers(scope=scope).get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return presented.strip()
    if scope["type"] == "websocket":
        return QueryParams(scope.get("query_string", b"")).get("api_key", "")
    return ""


async def _refuse(response: JSONResponse, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer with `response`; a WebSocket handshake gets it as its HTTP answer where the server can
    send one, else a close with 1008 (policy violation) before the socket is accepted (HTTP 403)."""
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008, "reason": str(response.status_code)})
        return
    await response(scope, receive, send)
