"""Blocking client for csm-serve, with the original design's method names and signatures."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from serve_app.client import calls
from serve_app.client.calls import AudioSource, Call
from serve_app.client.errors import RetryableError, error_from_response, error_from_transport
from serve_app.client.stream_input import SpeechSocket

if TYPE_CHECKING:
    from typing_extensions import Self

DEFAULT_URL = "http://127.0.0.1:8000"


def retry_delay(error: RetryableError, attempt: int, max_wait: float) -> float:
    """The server's Retry-After when given, else exponential backoff; never above `max_wait`."""
    hint = error.retry_after if error.retry_after is not None else 0.5 * 2**attempt
    return min(hint, max_wait)


class TTSClient:
    """Talks to one csm-serve deployment over HTTP.

    Non-2xx answers raise the typed errors of `serve_app.client.errors` with the server's message.
    `max_retries` retries 429/503 answers after the server's Retry-After (a stream only while no audio
    has come, since the caller may already have used part of it).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 300.0,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_retries: int = 0,
        max_retry_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.headers = dict(headers or {})
        all_headers = dict(self.headers)
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers=all_headers, transport=transport
        )

    # -- plumbing -------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send_once(self, call: Call) -> Any:
        try:
            response = self._http.request(call.method, call.path, json=call.json)
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.base_url + call.path) from exc
        if not response.is_success:
            raise error_from_response(response)
        return calls.read_reply(call, response.content, response.json)

    def _send(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                return self._send_once(call)
            except RetryableError as exc:
                if attempt >= self.max_retries:
                    raise
                time.sleep(retry_delay(exc, attempt, self.max_retry_wait))
                attempt += 1

    def _stream(self, call: Call, chunk_size: int | None) -> Iterator[bytes]:
        attempt, yielded = 0, False
        while True:
            try:
                for chunk in self._stream_once(call, chunk_size):
                    yielded = True
                    yield chunk
                return
            except RetryableError as exc:  # its status, before any audio: retried as `_send` does
                if yielded or attempt >= self.max_retries:
                    raise
                time.sleep(retry_delay(exc, attempt, self.max_retry_wait))
                attempt += 1

    def _stream_once(self, call: Call, chunk_size: int | None) -> Iterator[bytes]:
        try:
            with self._http.stream(call.method, call.path, json=call.json) as response:
                if not response.is_success:
                    response.read()
                    raise error_from_response(response)
                yield from response.iter_bytes(chunk_size)
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.base_url + call.path) from exc

    # -- the original design's calls --------------------------------------------------------------
    def speak(
        self,
        text: str,
        speaker: int = 0,
        max_duration_ms: int = 10000,
        *,
        context: Sequence[Mapping[str, Any]] | None = None,
        seed: int | None = None,
        voice: str | None = None,
        response_format: str | None = None,
        **extra: Any,
    ) -> bytes:
        """Whole utterance as audio bytes (WAV unless `response_format` says otherwise).

        `context` items are `{text, speaker, audio}` (a path or bytes) or `{text, speaker, audio_b64}`;
        `extra` passes further /speak fields (temperature, top_k, normalize, ...).
        """
        call = calls.speak(
            text, speaker, max_duration_ms, context=context, seed=seed, voice=voice,
            response_format=response_format, extra=extra,
        )
        return self._send(call)

    def clone_voice(
        self, text: str, reference_audio_path: AudioSource, reference_text: str, max_duration_ms: int = 20000
    ) -> bytes:
        """Speech in the voice of a reference recording (a path or the file's bytes)."""
        return self._send(calls.clone_voice(text, reference_audio_path, reference_text, max_duration_ms))

    def generate_conversation(
        self, turns: Sequence[Mapping[str, Any]], max_total_duration_ms: int = 30000
    ) -> bytes:
        """One WAV of `[{speaker, text, pause_ms}]` turns, each spoken with the earlier ones as context."""
        return self._send(calls.conversation(turns, max_total_duration_ms))

    def batch_speak(
        self, texts: Sequence[str], speaker: int = 0, max_duration_per_text_ms: int = 10000, **extra: Any
    ) -> list[bytes]:
        """One WAV per text, in input order (`extra`: `seed`, `response_format`, `speed`, ...)."""
        return self._send(calls.batch_speak(texts, speaker, max_duration_per_text_ms, extra))

    # -- additions ----------------------------------------------------------------------------------
    def stream_speak(
        self,
        text: str,
        speaker: int = 0,
        max_duration_ms: int = 10000,
        *,
        context: Sequence[Mapping[str, Any]] | None = None,
        seed: int | None = None,
        voice: str | None = None,
        response_format: str | None = None,
        chunk_size: int | None = None,
        **extra: Any,
    ) -> Iterator[bytes]:
        """Audio bytes as the server produces them (a streaming WAV header first, for WAV).

        Closing the iterator early closes the connection, which cancels generation on the server.
        """
        call = calls.speak(
            text, speaker, max_duration_ms, context=context, seed=seed, voice=voice,
            response_format=response_format, stream=True, extra=extra,
        )
        return self._stream(call, chunk_size)

    def contextual_speak(
        self, text: str, session_id: str, speaker: int = 0, max_duration_ms: int = 10000, **extra: Any
    ) -> bytes:
        """Speech that continues a server-side session's recent turns; the turn joins the session."""
        return self._send(calls.contextual_speak(text, session_id, speaker, max_duration_ms, extra))

    def reset_session(self, session_id: str) -> None:
        """Forget a session's context."""
        self._send(calls.reset_session(session_id))

    def add_voice(self, name: str, audio: AudioSource, transcript: str, speaker: int = 0) -> dict[str, Any]:
        """Save a reference voice (spoken as CSM's `speaker`) on the server; the answer carries its
        `id` for `voice=` (its name works too where no other saved voice has it)."""
        return self._send(calls.add_voice(name, audio, transcript, speaker))

    def list_voices(self) -> list[dict[str, Any]]:
        return self._send(calls.list_voices())

    def delete_voice(self, voice_id: str) -> None:
        self._send(calls.delete_voice(voice_id))

    def health(self) -> dict[str, Any]:
        """The health payload; raises `OverloadedError` (503) while the engine cannot serve."""
        return self._send(calls.health())

    def info(self) -> dict[str, Any]:
        """Model, revision, sample rate and limits."""
        return self._send(calls.info())

    # -- text streamed in (WebSocket) -------------------------------------------------------------
    def speech_socket(self) -> SpeechSocket:
        """A WebSocket for text that arrives as it is written (`with client.speech_socket() as s:`)."""
        return SpeechSocket(self.base_url, self.api_key, open_timeout=self.timeout, headers=self.headers)

    def speak_streamed(self, pieces: Iterable[str], **options: Any) -> Iterator[bytes]:
        """Audio for text given piece by piece (e.g. a language model's output, or stdin as it comes):
        pieces are sent from a thread as they come, audio is yielded as it is made. `options` are the
        context's (voice, speaker, output_format (default pcm_24000), speed, seed, ...). Leaving early closes
        the socket, which stops generation."""
        with self.speech_socket() as socket:
            context = socket.context(**options)
            failure: list[BaseException] = []

            def feed() -> None:
                try:
                    for piece in pieces:
                        context.send(piece)
                    context.close()
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    failure.append(exc)
                    socket.close()

            sender = threading.Thread(target=feed, name="csm-speak-streamed", daemon=True)
            sender.start()
            try:
                yield from context.audio()
            except Exception:
                if failure:
                    raise failure[0] from None
                raise
            sender.join(timeout=1)
