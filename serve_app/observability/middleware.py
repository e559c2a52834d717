"""ASGI middleware (pure ASGI, not BaseHTTPMiddleware, so streamed bodies pass through untouched).

- `RequestIdMiddleware` gives every HTTP request its id (the caller's `X-Request-ID` when log-safe,
  else a new one), for the whole app: `request.state.request_id`, the contextvar the JSON logs read,
  the incoming header downstream handlers see, and the response's `X-Request-ID`. It is the
  outermost middleware, so even a 401, 413 or 429 carries an id. A WebSocket gets one the same way
  (its handshake's answer carries it). Behind an HTTP server that answers
  with `X-Request-ID` itself (Ray Serve's proxy and a replica's direct ingress both do, with the id
  they put on the request), it leaves that header to the server: two would reach the client.
- `MetricsMiddleware` records request counts, latency, errors by status, time to the first audio
  byte and cache hits/misses (from `X-Cache`), and writes one JSON access-log line per request. A
  response that carries `Server-Timing` (a stream's first audio at the API and at the engine) gets
  the app's share too (`app;dur=`: from the request's arrival to the response's start), and the
  part of it spent waiting for a rate-limit token (`limit;dur=`, where a limiter is on). A WebSocket
  counts as one GET request: 101 once accepted (its access-log line written when it closes, its
  lifetime no latency sample), else the status its handshake was refused with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.observability.logs import access_log
from serve_app.observability.metrics import (
    HTTP_LATENCY,
    HTTP_REQUESTS,
    observe_time_to_first_audio,
    record_cache,
    record_error,
)
from serve_app.observability.request_ids import REQUEST_ID_HEADER, clean_request_id, request_id_var

AUDIO_CONTENT_TYPES = ("audio/", "text/event-stream")
"""Responses whose first body byte counts as 'first audio' (WAV/PCM/MP3..., and OpenAI SSE events)."""
QUIET_PATHS = frozenset({"/metrics", "/health", "/-/healthz", "/-/routes"})
"""Probe and scrape paths: counted, but logged at DEBUG so they do not flood the access log."""
CLIENT_CLOSED_REQUEST = 499
"""Status logged for a request whose client left before any response (as nginx does)."""
SWITCHING_PROTOCOLS = 101
"""Status of an accepted WebSocket."""
WEBSOCKET_DENIED = 403
"""Status of a WebSocket handshake closed before it was accepted (the server answers 403)."""
_SCOPES = ("http", "websocket")
_ANSWERS = ("http.response.start", "websocket.accept", "websocket.http.response.start")
"""Messages that start the answer to a request or a WebSocket handshake (they carry its headers)."""
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods that label metrics as themselves; any other token a server lets through counts as OTHER
(a client inventing methods must not invent time series)."""

_HEADER = REQUEST_ID_HEADER.lower().encode()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, set_header: bool = True) -> None:
        self.app = app
        self.set_header = set_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in _SCOPES:
            await self.app(scope, receive, send)
            return
        incoming = _header(scope["headers"], _HEADER)
        request_id = clean_request_id(incoming)
        if incoming != request_id:
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != _HEADER]
            scope["headers"].append((_HEADER, request_id.encode()))
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] in _ANSWERS and self.set_header:
                message.setdefault("headers", [])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in _SCOPES:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "audio": False, "first_audio": None}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "websocket.accept":
                state["status"], state["started"] = SWITCHING_PROTOCOLS, True
            elif message["type"] == "websocket.close" and not state.get("started"):
                state["status"], state["started"] = WEBSOCKET_DENIED, True
            elif message["type"] in ("http.response.start", "websocket.http.response.start"):
                state["status"] = message["status"]
                state["started"] = True
                headers = message.get("headers", [])
                state["audio"] = _header(headers, b"content-type").startswith(AUDIO_CONTENT_TYPES)
                state["cache"] = _header(headers, b"x-cache").lower()
                if timing := _header(headers, b"server-timing"):
                    # The app's own share of first audio, from the request's arrival (auth, limits,
                    # parsing included): the client's time less this is the proxy and the network.
                    app_ms = (time.perf_counter() - start) * 1000
                    limit_ms = scope.get("state", {}).get("limit_ms")  # its wait for a rate-limit token
                    limit = "" if limit_ms is None else f", limit;dur={limit_ms:.1f}"
                    MutableHeaders(scope=message)["server-timing"] = f"app;dur={app_ms:.1f}, {timing}{limit}"
            elif (
                message["type"] == "http.response.body"
                and state["audio"]
                and state["first_audio"] is None
                and message.get("body")
            ):
                state["first_audio"] = time.perf_counter() - start
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            # Cancelled from outside the app: Ray Serve's proxy cancels a request whose client left.
            scope.setdefault("state", {})["client_disconnected"] = True
            raise
        finally:
            _record(scope, state, time.perf_counter() - start)


def _record(scope: Scope, state: dict[str, Any], elapsed: float) -> None:
    # A WebSocket's handshake is a GET.
    method, endpoint, status = scope.get("method", "GET"), _endpoint(scope), state["status"]
    method = method if method in METHODS else "OTHER"
    scope_state = scope.get("state", {})
    if scope_state.get("client_disconnected") and not state.get("started"):
        status = CLIENT_CLOSED_REQUEST
    HTTP_REQUESTS.inc(method=method, endpoint=endpoint, status=str(status))
    if status != SWITCHING_PROTOCOLS:  # an open socket's lifetime is no latency
        HTTP_LATENCY.observe(elapsed, method=method, endpoint=endpoint)
    if status >= 400:
        record_error(status, endpoint)
    if state["first_audio"] is not None and status < 400 and state.get("cache") != "hit":
        # A cache hit's first byte is no generation's: counted as a hit, not as first audio.
        observe_time_to_first_audio(state["first_audio"], endpoint)
    if state.get("cache") in ("hit", "miss"):
        record_cache(state["cache"] == "hit")
    level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
    access_log.log(
        level,
        "%s %s %s",
        method,
        scope["path"],
        status,
        extra={
            "request_id": scope_state.get("request_id"),
            "method": method,
            "path": scope["path"],
            "endpoint": endpoint,
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
            "client_id": scope_state.get("client_id"),  # a key's fingerprint, never the key
        },
    )


def _endpoint(scope: Scope) -> str:
    """The route template (`/sessions/{session_id}`), so label values stay few; 'unmatched' for 404s.
    A request refused before routing (401, 429, 413, a drain's 503) is matched here against the
    app's routes, so it counts under its endpoint too."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    routes = getattr(getattr(scope.get("app"), "router", None), "routes", None)
    return (_route_template(routes, scope) if routes else None) or "unmatched"


def _route_template(routes: list[Any], scope: Scope) -> str | None:
    """The path template of the route that fully matches `scope` (FastAPI's included routers are
    searched through)."""
    for route in routes:
        nested = getattr(route, "original_router", None)
        if nested is not None:
            if found := _route_template(nested.routes, scope):
                return found
            continue
        path = getattr(route, "path", None)
        if isinstance(path, str) and route.matches(scope)[0] is Match.FULL:
            return path
    return None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""
