"""Text in as it is written, speech out as it is made: the clients' side of `/v1/audio/speech/stream`.

    with TTSClient(url) as client, client.speech_socket() as socket:
        context = socket.context(voice="nova", output_format="pcm_24000", speed=1.2)
        for piece in llm_tokens():
            context.send(piece)
        context.close()
        for chunk in context.audio():
            play(chunk)

`AsyncTTSClient.speech_socket()` is the asyncio twin (`async with`, `await context.send(...)`,
`async for chunk in context.audio()`). One reader (a thread, or a task) hands each server message to
its context's queue, so several contexts can be used on one socket at once.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import queue
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from serve_app.client.errors import TTSConnectionError, TTSError, error_for_status, error_from_response

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["AsyncSpeechContext", "AsyncSpeechSocket", "AudioEvent", "Done", "SpeechContext", "SpeechSocket"]

STREAM_PATH = "/v1/audio/speech/stream"


@dataclass(frozen=True)
class AudioEvent:
    context_id: str
    seq: int
    audio: bytes
    offset_ms: float
    duration_ms: float
    text_span: tuple[int, int]
    segment: int


@dataclass(frozen=True)
class Done:
    context_id: str
    finish_reason: str
    duration_ms: float
    segments: int


def socket_url(base_url: str) -> str:
    """The WebSocket URL of a server's HTTP base URL (`TTSConnectionError` for one without a scheme)."""
    if not base_url.startswith(("http://", "https://", "ws://", "wss://")):
        raise TTSConnectionError(f"{base_url!r} is not a URL: it needs http:// or https://")
    return base_url.rstrip("/").replace("https://", "wss://", 1).replace("http://", "ws://", 1) + STREAM_PATH


SESSION_HEADERS = {"x-request-timeout-seconds": "0"}
"""A socket lives as long as its conversation: Ray Serve's proxy would otherwise end it after its
`request_timeout_s` (end to end, WebSockets included); this header lifts that for the session."""


def _headers(api_key: str | None, headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """The client's own headers (a proxy's, a key given as a header), then the key, on the handshake."""
    return {**SESSION_HEADERS, **(headers or {}), **({"Authorization": f"Bearer {api_key}"} if api_key else {})}


def _event(message: dict[str, Any]) -> AudioEvent | Done | TTSError | None:
    kind = message.get("type")
    if kind == "audio":
        return AudioEvent(
            message["context_id"],
            message["seq"],
            base64.b64decode(message["audio"]),
            message["offset_ms"],
            message["duration_ms"],
            tuple(message["text_span"]),  # type: ignore[arg-type]
            message["segment"],
        )
    if kind == "done":
        return Done(message["context_id"], message["finish_reason"], message["duration_ms"], message["segments"])
    if kind == "error":  # the HTTP API's typed errors for the same statuses ("slow_reader": TTSError)
        code = message.get("code")
        return error_for_status(message.get("message", "error"), code if isinstance(code, int) else None,
                                detail=message)
    return None  # "flushed" and anything newer: nothing to hand over


def _handshake_error(exc: Exception, url: str) -> TTSError:
    """A refused handshake as the HTTP API's typed error for its status (message, Retry-After); any
    other failure to open (refused, dropped, not a WebSocket server) as `TTSConnectionError`."""
    if isinstance(exc, InvalidStatus):
        refused = exc.response
        headers = list(refused.headers.raw_items())
        response = httpx.Response(refused.status_code, headers=headers, content=bytes(refused.body))
        return error_from_response(response)
    return TTSConnectionError(f"cannot open {url}: {exc}")


_ids = itertools.count(1)


def _options(context_id: str | None, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return context_id or f"ctx-{next(_ids)}", {k: v for k, v in options.items() if v is not None}


class _ContextState:
    """What a context keeps, blocking or asyncio: its options until its first message, its `done`,
    the error that ended it (raised again by any later `events()`), and `flushed`, the flushes the
    server has answered (everything before them spoken)."""

    def __init__(self, context_id: str, options: dict[str, Any]) -> None:
        self.id = context_id
        self._options: dict[str, Any] | None = options
        self.done: Done | None = None
        self.error: TTSError | None = None
        self.flushed = 0
        self._last_error: TTSError | None = None

    def _text_message(self, text: str) -> dict[str, Any]:
        message = {"type": "text", "context_id": self.id, "text": text, **(self._options or {})}
        self._options = None
        return message

    def _cancelled_before_sending(self) -> bool:
        """A context that sent nothing has nothing on the server to cancel: it ends here."""
        if self._options is None:
            return False
        self.done = Done(self.id, "cancelled", 0.0, 0)
        return True

    def _finished(self) -> bool:
        """Whether the context has ended; raises the error that ended it, on every call."""
        if self.error is not None:
            raise self.error
        return self.done is not None

    def _take(self, event: AudioEvent | Done | TTSError | None) -> AudioEvent | None:
        """An audio event, or None once `event` ended the context: its `done` (one that says
        "error" keeps the error sent before it), a 404 (the server has no such context, as its first
        message was refused, whose error is kept; or its voice does not exist) or the socket
        closing: nothing comes after those. Any other error is about one message: raised once, and
        the context speaks on to its `done`."""
        if isinstance(event, AudioEvent):
            return event
        if isinstance(event, Done):
            self.done = event
            if event.finish_reason == "error":
                self.error = self._last_error
        elif event is None:
            self.error = TTSConnectionError(f"the socket closed before context {self.id!r} was done")
        elif event.status_code == 404:
            self.error = self._last_error or event
        else:
            self._last_error = event
            raise event
        return None


def _route(contexts: dict[str, Any], message: dict[str, Any]) -> tuple[Any, AudioEvent | Done | TTSError | None]:
    """The context a server message is for and its event (None: nothing to queue; a `flushed` is
    counted on the context here)."""
    context = contexts.get(message.get("context_id", ""))
    if context is not None and message.get("type") == "flushed":
        context.flushed += 1
    return context, _event(message)


# -- blocking ----------------------------------------------------------------------------------------
class SpeechContext(_ContextState):
    """One utterance stream on a `SpeechSocket`."""

    def __init__(self, socket: SpeechSocket, context_id: str, options: dict[str, Any]) -> None:
        super().__init__(context_id, options)
        self.socket = socket
        self._events: queue.SimpleQueue[AudioEvent | Done | TTSError | None] = queue.SimpleQueue()

    def send(self, text: str) -> None:
        """The next piece of text (the context's options go with its first one)."""
        self.socket._send(self._text_message(text))

    def flush(self) -> None:
        if self._options is not None:
            self.send("")
        self.socket._send({"type": "flush", "context_id": self.id})

    def close(self) -> None:
        """No more text: the rest is spoken, then the context ends."""
        if self._options is not None:
            self.send("")
        self.socket._send({"type": "close", "context_id": self.id})

    def cancel(self) -> None:
        """Stop speaking now (barge-in); `events()` then ends with a cancelled `Done`."""
        if not self._cancelled_before_sending():
            self.socket._send({"type": "cancel", "context_id": self.id})

    def events(self) -> Iterator[AudioEvent]:
        """Audio events until the context is done (its `Done` is kept in `.done`). Raises `TTSError`
        for an error the server reports for this context: one about a single message (a piece over
        the size limit) once, and calling `events()` again goes on to the context's end; one that
        ended the context (it failed), or `TTSConnectionError` if the socket drops, on every call."""
        while not self._finished():
            event = self._take(self._events.get())
            if event is not None:
                yield event

    def audio(self) -> Iterator[bytes]:
        for event in self.events():
            yield event.audio


class SpeechSocket:
    """A blocking `/v1/audio/speech/stream` connection; use as a context manager."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        open_timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        url = socket_url(base_url)
        try:
            # entered as a context manager (closed in `close`), as websockets wants
            self._ws: ClientConnection = connect(
                url, additional_headers=_headers(api_key, headers), open_timeout=open_timeout
            ).__enter__()
        except (OSError, WebSocketException, TimeoutError) as exc:
            raise _handshake_error(exc, url) from exc
        self._contexts: dict[str, SpeechContext] = {}
        self._lock = threading.Lock()  # one send at a time
        # `_contexts` between the reader thread and `context()`: every context, one made as the
        # reader ends included, hears that the socket closed.
        self._contexts_lock = threading.Lock()
        self._read_ended = False
        self._reader = threading.Thread(target=self._read, name="csm-speech-socket", daemon=True)
        self._reader.start()

    def context(self, context_id: str | None = None, **options: Any) -> SpeechContext:
        """A new context; `options` are the server's (voice, speaker, output_format, speed, seed, ...)."""
        cid, opts = _options(context_id, options)
        context = SpeechContext(self, cid, opts)
        with self._contexts_lock:
            self._contexts[cid] = context
            if self._read_ended:  # no message will come: its events end at once
                context._events.put(None)
        return context

    def _send(self, message: dict[str, Any]) -> None:
        try:
            with self._lock:
                self._ws.send(json.dumps(message))
        except ConnectionClosed as exc:
            raise TTSConnectionError(f"the socket is closed: {exc}") from exc

    def _read(self) -> None:
        try:
            for raw in self._ws:
                context, event = _route(self._contexts, json.loads(raw))
                if event is not None and context is not None:
                    context._events.put(event)
        except ConnectionClosed:
            pass
        finally:
            with self._contexts_lock:
                self._read_ended = True
                contexts = list(self._contexts.values())
            for context in contexts:
                context._events.put(None)

    def close(self) -> None:
        self._ws.close()
        self._reader.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- asyncio -----------------------------------------------------------------------------------------
class AsyncSpeechContext(_ContextState):
    """One utterance stream on an `AsyncSpeechSocket`."""

    def __init__(self, socket: AsyncSpeechSocket, context_id: str, options: dict[str, Any]) -> None:
        super().__init__(context_id, options)
        self.socket = socket
        self._events: asyncio.Queue[AudioEvent | Done | TTSError | None] = asyncio.Queue()

    async def send(self, text: str) -> None:
        await self.socket._send(self._text_message(text))

    async def flush(self) -> None:
        if self._options is not None:
            await self.send("")
        await self.socket._send({"type": "flush", "context_id": self.id})

    async def close(self) -> None:
        if self._options is not None:
            await self.send("")
        await self.socket._send({"type": "close", "context_id": self.id})

    async def cancel(self) -> None:
        if not self._cancelled_before_sending():
            await self.socket._send({"type": "cancel", "context_id": self.id})

    async def events(self) -> AsyncIterator[AudioEvent]:
        """As `SpeechContext.events`: an error about one message is raised once, then iteration
        may go on to the context's end."""
        while not self._finished():
            event = self._take(await self._events.get())
            if event is not None:
                yield event

    async def audio(self) -> AsyncIterator[bytes]:
        async for event in self.events():
            yield event.audio


class AsyncSpeechSocket:
    """An asyncio `/v1/audio/speech/stream` connection: `async with AsyncSpeechSocket(url) as s:`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        open_timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._url = socket_url(base_url)
        self._headers = _headers(api_key, headers)
        self._open_timeout = open_timeout
        self._ws: AsyncConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._contexts: dict[str, AsyncSpeechContext] = {}
        self._read_ended = False

    async def __aenter__(self) -> Self:
        try:
            self._ws = await async_connect(
                self._url, additional_headers=self._headers, open_timeout=self._open_timeout
            )
        except (OSError, WebSocketException, TimeoutError) as exc:
            raise _handshake_error(exc, self._url) from exc
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def context(self, context_id: str | None = None, **options: Any) -> AsyncSpeechContext:
        cid, opts = _options(context_id, options)
        context = AsyncSpeechContext(self, cid, opts)
        self._contexts[cid] = context
        if self._read_ended:  # no message will come: its events end at once, as the blocking socket's
            context._events.put_nowait(None)
        return context

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._ws is not None, "use the socket as `async with`"
        try:
            await self._ws.send(json.dumps(message))
        except ConnectionClosed as exc:
            raise TTSConnectionError(f"the socket is closed: {exc}") from exc

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                context, event = _route(self._contexts, json.loads(raw))
                if event is not None and context is not None:
                    context._events.put_nowait(event)
        except ConnectionClosed:
            pass
        finally:
            self._read_ended = True
            for context in self._contexts.values():
                context._events.put_nowait(None)

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader
