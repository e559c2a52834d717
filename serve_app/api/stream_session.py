"""One WebSocket of streamed text in, speech out: its contexts and the queue of messages to the client.

Each context is a task that takes segments from its `TextFeed` as they become certain and speaks them
through a `Narration` (each segment hearing the earlier ones), encoding the audio in the context's
output format (time-stretched first where the context asks for a speed other than 1.0). The reader
(`StreamSession.run`) only parses messages and hands text to contexts, so a context waiting for text
never blocks the socket, and cancelling one (barge-in) cancels its task: the engine stream of the
segment in progress is closed at once, which frees its slot at the next frame.

Nothing a context produces waits for the client: messages go to a queue that one writer task drains
to the socket. The queue is bounded by audio, per context: when more than `ws_max_buffered_s` of a
context's audio is waiting for a client that does not read, that context is closed with an error
(its queued audio dropped, its generation stopped) while the engine goes on serving everyone else.
Queued messages belong to the context object, not its id: an id reused after `close` names a new
context, and cancelling that one leaves the earlier one's audio and `done` to be sent.
A client that keeps sending without reading (each bad message is answered by an error) has its socket
closed (1008) once `MAX_QUEUED_MESSAGES` wait to be sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from serve_app.api.auth import key_of
from serve_app.api.errors import ApiError, engine_error
from serve_app.api.longform import Narration, SpeechPiece, SpokenLine
from serve_app.api.stream_messages import (
    CONTEXT_OPTIONS,
    CancelMessage,
    ClientMessage,
    CloseMessage,
    FlushMessage,
    TextMessage,
    audio_message,
    done_message,
    error_message,
)
from serve_app.api.synthesis import Synthesizer
from serve_app.audio.encode import StreamEncoder, open_stream_encoder
from serve_app.audio.formats import OutputFormat
from serve_app.audio.tempo import TempoStretcher
from serve_app.engine.types import SAMPLE_RATE, FinishReason
from serve_app.text.breaks import BreakTagError
from serve_app.text.lexicon import Lexicon
from serve_app.text.segment import Pause, TextFeed

__all__ = ["StreamSession"]

logger = logging.getLogger("serve_app.api.stream")

_MESSAGES: TypeAdapter[Any] = TypeAdapter(ClientMessage)
DRAIN_POLL_S = 0.25
"""How often a socket of a draining server looks whether it can close."""
MAX_QUEUED_MESSAGES = 10_000
"""Messages waiting for the client before its socket is closed: far above what the audio bound lets
contexts queue (8 contexts of 30 s in 80 ms chunks is 3000), so only a client that never reads meets it."""
_ENDED_KEPT = 1024
"""Ended contexts remembered per socket (their late text dropped); the oldest are forgotten first."""


class SlowReaderError(Exception):
    """A context's audio piled up beyond the bound: the client is not reading."""


class Outbox:
    """Messages for the socket, in order, with each context's unsent audio counted. Messages are
    filed under their context object (None: the socket's own), so two contexts that share an id
    one after the other never touch each other's messages."""

    def __init__(self, max_buffered_samples: int) -> None:
        self.max_buffered = max_buffered_samples
        self._queue: deque[tuple[SpeechContext | None, dict[str, Any], int]] = deque()
        self._waiting: dict[SpeechContext, int] = {}  # audio not yet on the socket; ended contexts leave
        self._ready = asyncio.Event()
        self._sending = 0  # taken by the writer, not yet on the socket

    def put(self, context: SpeechContext | None, message: dict[str, Any], samples: int = 0) -> None:
        """Queue a message; raises `SlowReaderError` when the context's unsent audio would exceed
        the bound (the message is not queued)."""
        if context is not None and samples:
            waiting = self._waiting.get(context, 0) + samples
            if waiting > self.max_buffered:
                raise SlowReaderError
            self._waiting[context] = waiting
        self._queue.append((context, message, samples))
        self._ready.set()

    def drop(self, context: SpeechContext) -> int:
        """Forget a context's queued messages (it was cancelled, or its client does not read); the
        samples of audio they held. The message the writer has taken still goes out."""
        dropped = sum(samples for owner, _, samples in self._queue if owner is context)
        self._queue = deque(item for item in self._queue if item[0] is not context)
        self._waiting.pop(context, None)
        return dropped

    async def get(self) -> tuple[SpeechContext | None, dict[str, Any], int]:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        self._sending += 1
        return self._queue.popleft()

    def sent(self, context: SpeechContext | None, samples: int) -> None:
        """The message `get` gave is on the socket."""
        self._sending -= 1
        if context is not None and context in self._waiting:
            self._waiting[context] -= samples
            if self._waiting[context] <= 0:
                del self._waiting[context]

    @property
    def empty(self) -> bool:
        """Nothing queued and nothing being sent: stopping the writer now loses no message."""
        return not self._queue and not self._sending

    def __len__(self) -> int:
        return len(self._queue)


class SpeechContext:
    """One context: its text feed, its narration and the task that speaks it."""

    def __init__(self, session: StreamSession, context_id: str, options: TextMessage) -> None:
        self.session = session
        self.id = context_id
        self.options = options
        synth = session.synth
        self.feed = TextFeed(synth.segments)
        self.lexicon: Lexicon = synth.lexicon_for(options.lexicon)
        self.encoder: StreamEncoder = open_stream_encoder(OutputFormat.parse(options.output_format))
        # One stretcher for the whole context, so its pieces are stretched as one signal (no clicks).
        self.stretcher = TempoStretcher(options.speed) if options.speed != 1.0 else None
        self.narration: Narration | None = None
        self.speaker = options.speaker
        self.seq = 0
        # The context's timeline in 24 kHz samples of the audio sent (after any speed change): what the
        # messages sent so far covered, and the audio written to the encoder since (the stretcher and
        # a resampling or compressing encoder hold some back); the text span and segment of the last
        # piece written.
        self.sent_samples = 0
        self.pending_samples = 0
        self.span, self.segment = (0, 0), 0
        self.flushes_pending = 0  # each flush is answered by its own `flushed`
        self.finished = False
        self._wake = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"speech-context-{context_id}")

    # -- from the reader ---------------------------------------------------------------------------
    def push(self, text: str) -> None:
        if self.feed.closed:
            raise ApiError(409, f"context {self.id!r} is closed: open a new context for more text")
        limit = self.session.synth.settings.max_long_text_chars
        _check_length(limit, self.id, len(self.feed.text) + len(text))
        self.feed.push(text)
        self._wake.set()

    def flush(self) -> None:
        self.feed.flush()
        self.flushes_pending += 1
        self._wake.set()

    def close(self) -> None:
        if not self.feed.closed:
            self.feed.close()
        self._wake.set()

    async def cancel(self) -> None:
        """Stop at once: the segment in progress is closed (its engine slot freed), queued audio dropped."""
        if self.task.done():
            return
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self._drop_queued()
        self._done(FinishReason.CANCELLED.value)

    # -- the task ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            self.narration = await self._narration()
            reason = await self._speak()
            self._send_tail()
            self._done(reason)
        except asyncio.CancelledError:
            raise
        except SlowReaderError:
            limit = self.session.synth.settings.ws_max_buffered_s
            self._fail(
                f"the client did not read: more than {limit:g} s of audio waited to be sent, so context "
                f"{self.id!r} was closed; read messages as they arrive",
                "slow_reader",
                reading=False,
            )
        except BreakTagError as exc:
            self._fail(str(exc), 422)
        except Exception as exc:  # one context failing must not take the socket down
            mapped = engine_error(exc, self.session.synth.settings.retry_after_s)  # a replica lost: 503
            if mapped is None:
                logger.exception("speech context %s failed", self.id)
                self._fail("internal error while speaking this context", 500)
            else:
                self._fail(str(mapped.detail), mapped.status_code)
        finally:
            with contextlib.suppress(Exception):
                self.encoder.close()

    async def _narration(self) -> Narration:
        synth, opts = self.session.synth, self.options
        voice = await synth.named_voice(opts.voice, key_of(self.session.websocket.scope)) if opts.voice else None
        narration = synth.narration(
            anchor=[synth.voice_reference(voice, opts.normalize)] if voice else [],
            sampling=synth.sampling(opts.temperature, opts.top_k, opts.seed),
            budget_ms=opts.max_duration_ms,
            request_id=f"{self.session.request_id}-{self.id}",
        )
        self.speaker = voice.info.speaker if voice else opts.speaker
        return narration

    async def _speak(self) -> str:
        narration = self.narration
        assert narration is not None
        while True:
            item = self.feed.next_item()
            if item is None:
                self._answer_flushes()
                if self.feed.exhausted:
                    return (narration.finish_reason or FinishReason.END_OF_AUDIO).value
                self._wake.clear()
                await self._wake.wait()
                continue
            if isinstance(item, Pause):
                piece = narration.pause(item.ms, item.start, item.end)
                if piece is not None:
                    self._send_piece(piece)
            else:
                spoken = self.session.synth.spoken(item.text, self.options.normalize, self.lexicon)
                for part in self.session.synth.recut(spoken) if spoken else []:  # as a whole text's are
                    line = SpokenLine(item, part)
                    async with contextlib.aclosing(narration.say(line, self.speaker)) as pieces:
                        async for piece in pieces:
                            self._send_piece(piece)
            if narration.out_of_time:
                return FinishReason.LENGTH.value

    def _answer_flushes(self) -> None:
        """Before the end: a flush then a close gets both. Every flush so far asked for a prefix of
        what has now been spoken, so each is answered, after the audio the stretcher held of it."""
        if not (self.flushes_pending and self.feed.flushed):
            return
        self._drain_stretcher(again=True)
        for _ in range(self.flushes_pending):
            self.session.outbox.put(self, {"type": "flushed", "context_id": self.id})
        self.flushes_pending = 0

    # -- output -----------------------------------------------------------------------------------
    def _send_piece(self, piece: SpeechPiece) -> None:
        self.span, self.segment = (piece.start, piece.end), piece.segment
        self._write(self.stretcher.process(piece.pcm) if self.stretcher else piece.pcm)

    def _write(self, pcm: np.ndarray) -> None:
        self.pending_samples += len(pcm)
        data = self.encoder.write(pcm)
        if data:
            self._send_audio(data)

    def _drain_stretcher(self, *, again: bool) -> None:
        """Send what the stretcher holds back (40-160 ms of stretched audio: new time, named after the
        last piece). `again`: more audio may follow, through a new stretcher; it starts at a segment's
        end (a fade-out), so without a click."""
        if self.stretcher:
            self._write(self.stretcher.flush())
            self.stretcher = TempoStretcher(self.options.speed) if again else None

    def _send_tail(self) -> None:
        """At the context's end, what was held back, named after the last piece: the stretcher's rest,
        then the encoder's tail."""
        self._drain_stretcher(again=False)
        tail = self.encoder.close()
        if tail:
            self._send_audio(tail)

    def _send_audio(self, data: bytes) -> None:
        """A message with the encoder's bytes, named after the piece whose write gave them, its time
        covering every piece written since the last message: the timeline starts at 0 and has no gap
        even where the encoder held a piece back. The encoder's tail at the end covers no new time
        (its samples were counted with their pieces) and is named after the last piece."""
        message = audio_message(self.id, self.seq, data, self.sent_samples, self.pending_samples, self.span, self.segment)
        self.session.outbox.put(self, message, self.pending_samples)
        self.sent_samples += self.pending_samples
        self.pending_samples = 0
        self.seq += 1

    def _drop_queued(self) -> None:
        """Forget the context's messages still queued (cancelled, or its client not reading): its
        timeline, and so its `done`, ends with the audio that goes out."""
        self.sent_samples -= self.session.outbox.drop(self)

    def _fail(self, message: str, code: int | str, *, reading: bool = True) -> None:
        """The error, then `done`. Audio made before the failure is sent first, as over HTTP, with
        what the stretcher and encoder held back (the stream ends well formed); a client that is
        not `reading` gets none of the audio still queued for it."""
        if not reading:
            self._drop_queued()
        elif self.sent_samples or self.pending_samples:
            with contextlib.suppress(Exception):  # the encoder may be what failed
                self._send_tail()
        self.session.outbox.put(self, error_message(message, code, self.id))
        self._done("error")

    def _done(self, reason: str) -> None:
        """`done`, its `duration_ms` the end of the audio messages sent (audio written but never
        sent, held back by a failed encoder or dropped, is not counted)."""
        if self.finished:
            return
        self.finished = True
        if not self.feed.closed:  # ended before its close: text still on its way for it is late
            self.session.ended[self.id] = reason
        segments = self.narration.requests if self.narration else 0
        self.session.outbox.put(self, done_message(self.id, reason, self.sent_samples, segments))
        self.session.forget(self)


class StreamSession:
    """The socket's reader, its contexts and its writer."""

    def __init__(self, websocket: WebSocket, synth: Synthesizer, request_id: str) -> None:
        self.websocket = websocket
        self.synth = synth
        self.request_id = request_id
        settings = synth.settings
        self.outbox = Outbox(int(settings.ws_max_buffered_s * SAMPLE_RATE))
        self.contexts: dict[str, SpeechContext] = {}
        # Contexts that ended before the client closed them (cancelled, out of time, failed) → why.
        # Text still in flight for one (a language model's next tokens after a barge-in) is dropped
        # with one error, instead of opening a new context under the old id.
        self.ended: OrderedDict[str, str] = OrderedDict()
        self._closing = False
        # Set by the ingress's drain gate under Ray: a stopping server takes no new contexts, and
        # closes the socket (1001, going away) once the open ones are done.
        self._draining: Callable[[], bool] = websocket.scope.get("state", {}).get("draining") or (lambda: False)

    def forget(self, context: SpeechContext) -> None:
        if self.contexts.get(context.id) is context:
            del self.contexts[context.id]

    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        closer = asyncio.create_task(self._close_when_drained())
        try:
            await self._read()
            # `close` without a context: let every context finish, send what is queued, then close;
            # the socket is still watched, so a client that leaves meanwhile stops its contexts.
            watcher = asyncio.create_task(self._until_disconnect())
            finishing = asyncio.ensure_future(
                asyncio.gather(*(c.task for c in list(self.contexts.values())), return_exceptions=True)
            )
            await asyncio.wait([watcher, finishing, writer], return_when=asyncio.FIRST_COMPLETED)
            if not finishing.done():  # the client left (or the socket failed): nobody to speak to
                finishing.cancel()
                raise WebSocketDisconnect(1001)
            watcher.cancel()
            while not self.outbox.empty and not writer.done():
                await asyncio.sleep(0.01)
            writer.cancel()
            with contextlib.suppress(Exception):
                await self.websocket.close(1000)
        except WebSocketDisconnect:
            pass
        finally:
            writer.cancel()
            closer.cancel()
            for context in list(self.contexts.values()):
                await context.cancel()

    async def _close_when_drained(self) -> None:
        """While the server drains: once no context is open and nothing waits to be sent, go away."""
        while not (self._draining() and not self.contexts and self.outbox.empty):
            await asyncio.sleep(DRAIN_POLL_S)
        with contextlib.suppress(Exception):
            await self.websocket.close(1001, "the server is shutting down")

    async def _until_disconnect(self) -> None:
        """After a socket-wide `close`: messages are ignored, a disconnect returns."""
        while (await self.websocket.receive())["type"] != "websocket.disconnect":
            pass

    async def _write(self) -> None:
        while True:
            context_id, message, samples = await self.outbox.get()
            await self.websocket.send_text(json.dumps(message))
            self.outbox.sent(context_id, samples)

    async def _read(self) -> None:
        limit = self.synth.settings.ws_max_message_chars
        while not self._closing:
            if len(self.outbox) > MAX_QUEUED_MESSAGES:
                with contextlib.suppress(Exception):
                    await self.websocket.close(1008, "the client does not read its messages")
                raise WebSocketDisconnect(1008)
            raw = await self._receive()
            if raw is None:
                self.outbox.put(None, error_message("invalid message: a binary frame must be UTF-8 JSON", 400))
                continue
            if len(raw) > limit:
                error = error_message(f"message over the {limit}-character limit", 413, _context_id_in(raw))
                self.outbox.put(None, error)
                continue
            try:
                message = _MESSAGES.validate_json(raw)
            except ValidationError as exc:
                details = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
                    for e in exc.errors(include_url=False)
                )
                self.outbox.put(None, error_message(f"invalid message: {details}", 422, _context_id_in(raw)))
                continue
            try:
                await self._handle(message)
            except ApiError as exc:
                context_id = getattr(message, "context_id", None)
                self.outbox.put(None, error_message(str(exc.detail), exc.status_code, context_id))

    async def _receive(self) -> str | None:
        """The next message's text; a binary frame counts as its UTF-8 text (None: not UTF-8), as
        some WebSocket libraries send JSON that way."""
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        if message.get("text") is not None:
            return message["text"]
        try:
            return (message.get("bytes") or b"").decode("utf-8")
        except UnicodeDecodeError:
            return None

    async def _handle(self, message: Any) -> None:
        if isinstance(message, CloseMessage) and message.context_id is None:
            self._closing = True
            for context in self.contexts.values():
                context.close()
            return
        context = self.contexts.get(message.context_id)
        if context is None and message.context_id in self.ended:
            self._late(message)
            return
        if isinstance(message, TextMessage):
            if context is None:
                context = self._open(message)
            elif message.model_fields_set & CONTEXT_OPTIONS:
                raise ApiError(
                    422, f"context {message.context_id!r} is open: its options come with its first message only"
                )
            context.push(message.text)
            return
        if context is None:
            raise ApiError(404, f"no open context {message.context_id!r}")
        if isinstance(message, FlushMessage):
            context.flush()
        elif isinstance(message, CloseMessage):
            context.close()
        elif isinstance(message, CancelMessage):
            await context.cancel()

    def _late(self, message: Any) -> None:
        """A message for a context that ended before its close: dropped. Its first late text gets an
        error; flushes, closes and cancels in flight need no answer."""
        reason = self.ended[message.context_id]
        if isinstance(message, TextMessage) and reason != "late":
            self.ended[message.context_id] = "late"
            raise ApiError(
                409,
                f"context {message.context_id!r} has ended ({reason}): its later text is dropped; "
                "open a new context_id for more",
            )

    def _open(self, message: TextMessage) -> SpeechContext:
        if self._draining():
            raise ApiError(503, "the server is shutting down: open new contexts on a new socket")
        limit = self.synth.settings.ws_max_contexts
        if len(self.contexts) >= limit:
            raise ApiError(429, f"{limit} contexts are open on this socket; close one first")
        # Every check of the first message before the context exists: a refused one opens nothing.
        _check_length(self.synth.settings.max_long_text_chars, message.context_id, len(message.text))
        self.synth.lexicon_for(message.lexicon)  # 422 now for unusable entries
        context = SpeechContext(self, message.context_id, message)
        self.contexts[message.context_id] = context
        while len(self.ended) > _ENDED_KEPT:
            self.ended.popitem(last=False)
        return context


def _check_length(limit: int, context_id: str, length: int) -> None:
    """413 for text that would make a context hold more than `limit` characters."""
    if length > limit:
        raise ApiError(413, f"context {context_id!r} would hold more than {limit} characters of text")


def _context_id_in(raw: str) -> str | None:
    """The `context_id` of a message refused before it was validated, where it names one: the client
    then hears of the fault on that context (its first message invalid, its text too long)."""
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):  # deeply nested arrays fit in a message
        return None
    context_id = message.get("context_id") if isinstance(message, dict) else None
    return context_id if isinstance(context_id, str) else None
