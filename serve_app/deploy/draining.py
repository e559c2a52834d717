"""Draining ingress replicas: before a stop, new requests get 503 while those in flight finish.

Deleting a Serve application removes its HTTP route at once (new requests would get the proxy's
404) while its replicas finish what they serve. So a stop first raises a flag in `SharedState`
(`DrainBoard`); each ingress replica polls it, and once it is up answers new requests with 503 +
Retry-After + `Connection: close` (/health too, so load balancers look elsewhere), while it reports
how many requests it still has in flight. When every replica reports none, the application can go.
An open WebSocket counts as in flight: it refuses new contexts, finishes those open, then closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["DrainBoard", "DrainGate"]

logger = logging.getLogger("serve_app.draining")

POLL_S = 0.5
"""How often an ingress replica reports to the board (and learns of a drain)."""


@dataclass
class DrainBoard:
    """Held by `SharedState`: the drain flag and each ingress replica's last report."""

    draining_since: float | None = None
    reports: dict[str, tuple[int, float]] = field(default_factory=dict)  # replica → (in flight, at)
    clock: Callable[[], float] = time.monotonic

    def begin(self) -> None:
        if self.draining_since is None:
            self.draining_since = self.clock()

    def report(self, replica_id: str, in_flight: int) -> bool:
        """Record a replica's requests in flight; answers whether to drain."""
        self.reports[replica_id] = (in_flight, self.clock())
        return self.draining_since is not None

    def in_flight(self) -> int | None:
        """Requests still in flight on the live ingress replicas (heard from in the last two polls),
        None until known: three polls into the drain, every live replica's last report was sent
        after it had learnt of the drain, so it counts all it admitted."""
        if self.draining_since is None:
            return None
        now = self.clock()
        if now < self.draining_since + 3 * POLL_S:
            return None
        return sum(n for n, at in self.reports.values() if at > now - 2 * POLL_S)


class DrainGate:
    """Pure ASGI middleware on the ingress: counts requests in flight, refuses new ones once the
    board says drain, and reports to the board every `POLL_S` (its task runs while the app runs)."""

    def __init__(self, app: ASGIApp, replica_id: str, report: Callable[[str, int], Awaitable[bool]]) -> None:
        self.app = app
        self.replica_id = replica_id
        self.report = report
        self.in_flight = 0
        self.draining = False
        self._poller: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # the board may be restarting: serve on meanwhile
                draining = await self.report(self.replica_id, self.in_flight)
                if draining and not self.draining:
                    logger.warning("draining: new requests get 503, %d in flight finish", self.in_flight)
                self.draining = draining
            await asyncio.sleep(POLL_S)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())
        if scope["type"] == "websocket":
            await self._socket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.draining:
            response = JSONResponse(
                {"detail": "the server is shutting down; retry in a moment"},
                503,
                {"Retry-After": "1", "Connection": "close"},
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _socket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket is in flight while it is open; one opened during a drain is refused (1013, try
        again later), and an open one learns of the drain through `scope["state"]["draining"]`."""
        if self.draining:
            await send({"type": "websocket.close", "code": 1013, "reason": "the server is shutting down"})
            return
        scope.setdefault("state", {})["draining"] = lambda: self.draining
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
