"""Asyncio client for csm-serve: the same calls as `TTSClient`, awaitable."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from serve_app.client import calls
from serve_app.client.calls import AudioSource, Call
from serve_app.client.errors import RetryableError, error_from_response, error_from_transport
from serve_app.client.stream_input import AsyncSpeechSocket
from serve_app.client.sync import DEFAULT_URL, retry_delay

if TYPE_CHECKING:
    from typing_extensions import Self


class AsyncTTSClient:
    """Async twin of `TTSClient`; use `async with AsyncTTSClient(url) as client:`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 300.0,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_retries: int = 0,
        max_retry_wait: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
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
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, headers=all_headers, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send_once(self, call: Call) -> Any:
        try:
            response = await self._http.request(call.method, call.path, json=call.json)
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.base_url + call.path) from exc
        if not response.is_success:
            raise error_from_response(response)
        return calls.read_reply(call, response.content, response.json)

    async def _send(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                return await self._send_once(call)
            except RetryableError as exc:
                if attempt >= self.max_retries:
                    raise
                await asyncio.sleep(retry_delay(exc, attempt, self.max_retry_wait))
                attempt += 1

    async def _stream(self, call: Call, chunk_size: int | None) -> AsyncIterator[bytes]:
        attempt, yielded = 0, False
        while True:
            try:
                async for chunk in self._stream_once(call, chunk_size):
                    yielded = True
                    yield chunk
                return
            except RetryableError as exc:  # its status, before any audio: retried as `_send` does
                if yielded or attempt >= self.max_retries:
                    raise
                await asyncio.sleep(retry_delay(exc, attempt, self.max_retry_wait))
                attempt += 1

    async def _stream_once(self, call: Call, chunk_size: int | None) -> AsyncIterator[bytes]:
        try:
            async with self._http.stream(call.method, call.path, json=call.json) as response:
                if not response.is_success:
                    await response.aread()
                    raise error_from_response(response)
                async for chunk in response.aiter_bytes(chunk_size):
                    yield chunk
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.base_url + call.path) from exc

    async def speak(
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
        call = calls.speak(
            text, speaker, max_duration_ms, context=context, seed=seed, voice=voice,
            response_format=response_format, extra=extra,
        )
        return await self._send(call)

    async def clone_voice(
        self, text: str, reference_audio_path: AudioSource, reference_text: str, max_duration_ms: int = 20000
    ) -> bytes:
        call = calls.clone_voice(text, reference_audio_path, reference_text, max_duration_ms)
        return await self._send(call)

    async def generate_conversation(
        self, turns: Sequence[Mapping[str, Any]], max_total_duration_ms: int = 30000
    ) -> bytes:
        return await self._send(calls.conversation(turns, max_total_duration_ms))

    async def batch_speak(
        self, texts: Sequence[str], speaker: int = 0, max_duration_per_text_ms: int = 10000, **extra: Any
    ) -> list[bytes]:
        return await self._send(calls.batch_speak(texts, speaker, max_duration_per_text_ms, extra))

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
    ) -> AsyncIterator[bytes]:
        """`async for chunk in client.stream_speak(...)`; closing the iterator cancels generation."""
        call = calls.speak(
            text, speaker, max_duration_ms, context=context, seed=seed, voice=voice,
            response_format=response_format, stream=True, extra=extra,
        )
        return self._stream(call, chunk_size)

    async def contextual_speak(
        self, text: str, session_id: str, speaker: int = 0, max_duration_ms: int = 10000, **extra: Any
    ) -> bytes:
        return await self._send(calls.contextual_speak(text, session_id, speaker, max_duration_ms, extra))

    async def reset_session(self, session_id: str) -> None:
        await self._send(calls.reset_session(session_id))

    async def add_voice(self, name: str, audio: AudioSource, transcript: str, speaker: int = 0) -> dict[str, Any]:
        return await self._send(calls.add_voice(name, audio, transcript, speaker))

    async def list_voices(self) -> list[dict[str, Any]]:
        return await self._send(calls.list_voices())

    async def delete_voice(self, voice_id: str) -> None:
        await self._send(calls.delete_voice(voice_id))

    async def health(self) -> dict[str, Any]:
        return await self._send(calls.health())

    async def info(self) -> dict[str, Any]:
        return await self._send(calls.info())

    def speech_socket(self) -> AsyncSpeechSocket:
        """A WebSocket for text that arrives as it is written (`async with client.speech_socket() as s:`)."""
        return AsyncSpeechSocket(self.base_url, self.api_key, open_timeout=self.timeout, headers=self.headers)

    async def speak_streamed(
        self, pieces: AsyncIterable[str] | Iterable[str], **options: Any
    ) -> AsyncIterator[bytes]:
        """Audio for text given piece by piece; pieces are sent as they come, audio yielded as it is
        made (see `TTSClient.speak_streamed`)."""
        async with self.speech_socket() as socket:
            context = socket.context(**options)
            failure: list[BaseException] = []

            async def feed() -> None:
                try:
                    if isinstance(pieces, AsyncIterable):
                        async for piece in pieces:
                            await context.send(piece)
                    else:
                        for piece in pieces:
                            await context.send(piece)
                    await context.close()
                except Exception as exc:  # noqa: BLE001 - re-raised below, in the caller's task
                    failure.append(exc)
                    await socket.aclose()  # ends the audio below; this error is the one raised

            sender = asyncio.create_task(feed())
            try:
                async for chunk in context.audio():
                    yield chunk
                await sender
            except Exception:
                if failure:  # set before the socket closed, so before the audio could end
                    raise failure[0] from None
                raise  # the server's error: raised now, the text source may still be writing
            finally:
                sender.cancel()
            if failure:
                raise failure[0]
