"""ASGI middleware: early 413s for oversized bodies, cancelling the work of a client that has gone
away, and the 500 of an unexpected error (request ids: `serve_app.observability.middleware`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.api.errors import error_body

__all__ = ["BodyLimitMiddleware", "CancelOnDisconnectMiddleware", "UnexpectedErrorMiddleware"]

logger = logging.getLogger("serve_app.api")


class BodyLimitMiddleware:
    """413 for request bodies over the limit, as the API's JSON error.

    A declared Content-Length over the limit is refused before anything is read; a body sent without
    one is counted as it arrives and stopped at the limit. (FastAPI's own `max_body_size` answers in
    plain text and overrides the app's error handlers, hence this.)"""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"request body is larger than the {self.max_body_bytes}-byte limit"
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await JSONResponse(error_body(scope["path"], 413, detail), status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, detail)  # raised inside the route: the error handlers answer it
            return message

        await self.app(scope, counted_receive, send)


class CancelOnDisconnectMiddleware:
    """Cancels a request's handler as soon as its client disconnects, streaming or not.

    A plain (non-streaming) endpoint never hears of a disconnect: it would hold its engine slot until
    the whole utterance is generated for nobody. Once the app has read the whole body, this listens
    on `receive` for `http.disconnect` (which the server, or Ray Serve's proxy, sends when the client
    goes) and cancels the handler; the engine frees the slot at its next frame. Later `receive` calls
    by the app (e.g. a streaming response watching for the disconnect itself) get the same message.
    The access log records such requests with status 499."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        disconnected = asyncio.Event()
        listener: asyncio.Task[None] | None = None

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        async def app_receive() -> Message:
            nonlocal listener
            if listener is not None:  # the body is read: only a disconnect can come
                await disconnected.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
            elif not message.get("more_body", False):
                listener = asyncio.create_task(listen())
            return message

        handler = asyncio.create_task(self.app(scope, app_receive, send))
        gone = asyncio.create_task(disconnected.wait())
        try:
            await asyncio.wait({handler, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done():
                scope.setdefault("state", {})["client_disconnected"] = True
                handler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await handler
        finally:
            gone.cancel()
            if listener is not None:
                listener.cancel()


class UnexpectedErrorMiddleware:
    """A 500 (the API's JSON error, naming the request id) for an exception no handler answered,
    logged once with its traceback and the request id.

    Inside the request-id middleware, so the log line and the response carry the id. The error is not
    raised on: Starlette's last-resort handler would re-raise it, and the server (uvicorn, Ray Serve)
    would log its traceback a second time, without the id. An error after the response has started
    is raised on, since only the server can cut the response short."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception:
            if started:
                raise
            request_id = scope.get("state", {}).get("request_id", "")
            logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            detail = f"internal error (request id {request_id})"
            await JSONResponse(error_body(scope["path"], 500, detail), status_code=500)(scope, receive, send)
