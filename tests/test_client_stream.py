"""The clients' WebSocket input streaming and `csm-serve speak --ws`, against a server on loopback."""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from serve_app.cli import cli
from serve_app.client import (
    AsyncTTSClient,
    AuthenticationError,
    NotFoundError,
    OverloadedError,
    TooLargeError,
    TTSClient,
    TTSConnectionError,
    UnprocessableEntityError,
)
from serve_app.engine.types import FRAME_SAMPLES, SAMPLE_RATE
from tests.support_tools import ToneEngine, api_app, read_wav, serve_http

ROOT = Path(__file__).resolve().parents[1]
PIECES = ["The first", " sentence is short. The second", " one takes", " a little longer to write", "."]


@pytest.fixture(scope="module")
def engine() -> ToneEngine:
    return ToneEngine()


@pytest.fixture(scope="module")
def url(engine, tmp_path_factory) -> str:
    with serve_http(api_app(engine, tmp_path_factory.mktemp("voices"))) as base:
        yield base


def _frames(text: str) -> int:
    return 2 + len(text) // 4  # the tone engine's length rule


def written(pieces: list[str]):
    """Pieces as a language model writes them: a little apart."""
    for piece in pieces:
        time.sleep(0.05)
        yield piece


def test_sync_client_speaks_pieces_as_they_come(url: str, engine: ToneEngine) -> None:
    engine.requests.clear()
    with TTSClient(url) as client:
        audio = b"".join(client.speak_streamed(written(PIECES), speaker=0, seed=1))
    texts = [q.text for q in engine.requests]
    assert texts == ["The first sentence is short.", "The second one takes a little longer to write."]
    assert len(audio) == sum(_frames(t) for t in texts) * FRAME_SAMPLES * 2
    assert engine.requests[1].context[-1].text == texts[0]


def test_async_client_contexts_events_and_cancel(url: str, engine: ToneEngine) -> None:
    async def scenario() -> tuple[list, list, str]:
        async def pieces():
            for piece in PIECES:
                await asyncio.sleep(0.05)
                yield piece

        async with AsyncTTSClient(url) as client:
            streamed = [chunk async for chunk in client.speak_streamed(pieces(), output_format="ulaw_8000")]
            async with client.speech_socket() as socket:
                kept = socket.context("keep", speaker=1)
                dropped = socket.context("drop")
                await kept.send("Kept to the end.")
                await dropped.send("This one is interrupted")
                await dropped.flush()
                await kept.close()
                events = [event async for event in kept.events()]
                async for _ in dropped.events():
                    await dropped.cancel()
                    break
                async for _ in dropped.events():
                    pass
                return streamed, events, dropped.done.finish_reason

    streamed, events, reason = asyncio.run(scenario())
    total = sum(_frames(t) for t in ["The first sentence is short.", "The second one takes a little longer to write."])
    assert abs(len(b"".join(streamed)) - total * FRAME_SAMPLES // 3) <= 2  # μ-law: a byte per 8 kHz sample
    assert [e.seq for e in events] == list(range(len(events))) and events[0].text_span == (0, 16)
    assert reason == "cancelled"


def test_server_errors_become_typed_client_errors(url: str, tmp_path: Path) -> None:
    with TTSClient(url) as client, pytest.raises(NotFoundError, match="not found") as err:
        list(client.speak_streamed(["Hello."], voice="nobody"))
    assert err.value.status_code == 404
    # A first message the server refuses outright (its options invalid) fails that context, with the
    # server's reason, instead of a later "no open context".
    with TTSClient(url) as client, pytest.raises(UnprocessableEntityError, match="temperature"):
        list(client.speak_streamed(["Hello."], temperature=-5))
    with TTSClient(url.removeprefix("http://")) as client, pytest.raises(TTSConnectionError, match="needs http"):
        list(client.speak_streamed(["Hello."]))
    with serve_http(api_app(ToneEngine(), tmp_path, api_keys="k1")) as guarded:
        with pytest.raises(AuthenticationError), TTSClient(guarded) as client:
            list(client.speak_streamed(["Hello."]))
        with TTSClient(guarded, api_key="k1") as client:
            assert b"".join(client.speak_streamed(["Hello."]))
        # headers given to the client (a proxy's, or the key as a header) go on the handshake too
        with TTSClient(guarded, headers={"Authorization": "Bearer k1"}) as client:
            assert client.info()["sample_rate"] == SAMPLE_RATE
            assert b"".join(client.speak_streamed(["Hello."]))

        async def async_headers() -> bytes:
            async with AsyncTTSClient(guarded, headers={"Authorization": "Bearer k1"}) as client:
                return b"".join([chunk async for chunk in client.speak_streamed(["Hello."])])

        assert asyncio.run(async_headers())


@contextlib.contextmanager
def answering(answer: bytes) -> Iterator[str]:
    """A server that reads one request per connection, writes `answer` (b"": nothing) and hangs up."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_a_refused_or_dropped_handshake_is_a_typed_error() -> None:
    body = b'{"detail": "the server is draining"}'
    draining = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with answering(draining) as refusing:
        with TTSClient(refusing) as client, pytest.raises(OverloadedError) as err:
            client.speech_socket()
        assert err.value.message == "the server is draining" and err.value.retry_after == 3.0

        async def refused_async() -> None:
            async with AsyncTTSClient(refusing) as client, client.speech_socket():
                pass

        with pytest.raises(OverloadedError, match="draining"):
            asyncio.run(refused_async())
    with answering(b"") as hanging_up, TTSClient(hanging_up) as client, \
            pytest.raises(TTSConnectionError, match="cannot open"):
        client.speech_socket()


def test_a_context_counts_answered_flushes_keeps_its_error_and_cancels_unsent(url: str) -> None:
    with TTSClient(url) as client, client.speech_socket() as socket:
        spoken = socket.context(speaker=0)
        spoken.send("Spoken up to here")
        spoken.flush()
        events = spoken.events()
        next(events)  # the flushed text's audio
        deadline = time.monotonic() + 10
        while spoken.flushed == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert spoken.flushed == 1
        spoken.close()
        assert list(events) and spoken.done is not None and spoken.done.finish_reason == "end_of_audio"

        failed = socket.context(voice="nobody")
        failed.send("Hello.")
        for _ in range(2):  # the second call raises the same error rather than waiting
            with pytest.raises(NotFoundError):
                list(failed.events())

        unsent = socket.context()
        unsent.cancel()  # nothing reached the server: it ends here, with no error
        assert list(unsent.events()) == [] and unsent.done.finish_reason == "cancelled"


def test_an_error_about_one_message_is_raised_once_and_the_context_speaks_on(
    url: str, engine: ToneEngine
) -> None:
    """The server refuses one piece (over the context's 400 characters, or over the size of one
    message) and speaks the others: `events()` raises each refusal once, then goes on to `done`."""
    engine.requests.clear()
    with TTSClient(url) as client, client.speech_socket() as socket:
        context = socket.context(speaker=0)
        context.send("The first piece is fine. ")
        context.send("x" * 500)
        context.send("y" * 70_000)
        context.send("So is the last one.")
        context.close()
        events: list[Any] = []
        for refused in (TooLargeError, TooLargeError):
            with pytest.raises(refused):
                events.extend(context.events())  # the audio before the error is kept
        events += context.events()
        assert context.done is not None and context.done.finish_reason == "end_of_audio"
        assert list(context.events()) == []  # done: nothing more, nothing raised
    assert [q.text for q in engine.requests] == ["The first piece is fine.", "So is the last one."]
    assert [e.seq for e in events] == list(range(len(events)))
    assert context.done.duration_ms == pytest.approx(sum(e.duration_ms for e in events))


def test_the_async_client_ends_a_context_only_at_its_end(url: str) -> None:
    """A refused piece is raised once; a context that failed, or that the server never opened (its
    first message refused), raises its error on every call rather than waiting."""

    async def raised(context: Any) -> type[BaseException] | None:
        try:
            async for _ in context.events():
                pass
        except Exception as exc:  # noqa: BLE001 - its type is the answer
            return type(exc)
        return None

    async def scenario() -> list[list[type[BaseException] | None]]:
        async with AsyncTTSClient(url) as client, client.speech_socket() as socket:
            refused_piece, failed = socket.context(), socket.context()
            never_opened = socket.context(temperature=-5)
            for context, pieces in [
                (refused_piece, ["Spoken. ", "x" * 500, "Spoken too."]),
                (failed, ["Spoken first. Then an overload."]),  # the tone engine fails a segment saying so
                (never_opened, ["Hello."]),
            ]:
                for piece in pieces:
                    await context.send(piece)
                await context.close()
            contexts = (refused_piece, failed, never_opened)
            calls = [[await raised(context) for _ in range(3)] for context in contexts]
            assert refused_piece.done.finish_reason == "end_of_audio" and failed.done.finish_reason == "error"
            return calls

    calls = asyncio.run(asyncio.wait_for(scenario(), timeout=20))
    assert calls == [
        [TooLargeError, None, None],
        [OverloadedError] * 3,
        [UnprocessableEntityError] * 3,
    ]


def on_time(call: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """`call()` in a thread: its result or its exception, or a failure if it blocks."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert outcome, f"blocked for {timeout_s} s"
    return outcome[0]


def test_a_context_made_after_the_socket_closed_ends_at_once(url: str) -> None:
    with TTSClient(url) as client:
        socket = client.speech_socket()
        socket.close()
        late = socket.context()
        assert isinstance(on_time(lambda: list(late.events())), TTSConnectionError)


def test_an_async_context_made_after_the_socket_closed_ends_at_once(url: str) -> None:
    async def scenario() -> None:
        async with AsyncTTSClient(url) as client:
            async with client.speech_socket() as speech_socket:
                pass
            late = speech_socket.context()
            with pytest.raises(TTSConnectionError):
                async for _ in late.events():
                    pass

    asyncio.run(asyncio.wait_for(scenario(), timeout=20))


def test_the_async_client_raises_the_text_sources_error_instead_of_waiting(url: str) -> None:
    async def pieces():
        yield "Hello. "
        raise RuntimeError("the language model broke")

    async def scenario() -> None:
        async with AsyncTTSClient(url) as client:
            async for _ in client.speak_streamed(pieces()):
                pass

    with pytest.raises(RuntimeError, match="language model broke"):
        asyncio.run(asyncio.wait_for(scenario(), timeout=20))


def test_the_async_client_raises_the_servers_error_without_waiting_for_the_text_source(url: str) -> None:
    async def pieces():
        yield "Hello. "
        await asyncio.sleep(30)  # a language model still writing
        yield "More."

    async def scenario() -> float:
        start = time.monotonic()
        async with AsyncTTSClient(url) as client:
            with pytest.raises(NotFoundError, match="not found"):
                async for _ in client.speak_streamed(pieces(), voice="nobody"):
                    pass
        return time.monotonic() - start

    assert asyncio.run(asyncio.wait_for(scenario(), timeout=20)) < 2


def test_cli_speaks_stdin_as_it_arrives(url: str, tmp_path: Path) -> None:
    out = tmp_path / "reply.wav"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "serve_app.cli", "--url", url, "speak", "--ws", "-", "-o", str(out)],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"Hello from a pipe. And then")
    proc.stdin.flush()
    part = out.with_name(out.name + ".part")
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size > 44) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert part.exists() and part.stat().st_size > 44  # speech before stdin was finished
    proc.stdin.write(b" more words arrive later.")
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0, proc.stderr.read().decode() if proc.stderr else ""
    pcm, rate = read_wav(out.read_bytes())
    assert rate == SAMPLE_RATE
    expected = _frames("Hello from a pipe.") + _frames("And then more words arrive later.")
    assert len(pcm) == expected * FRAME_SAMPLES
    assert b"first audio after" in (proc.stderr.read() if proc.stderr else b"")


def test_speed_goes_through_the_clients_and_the_cli(url: str, engine: ToneEngine, tmp_path: Path) -> None:
    """`speed` is a context option like any other: the clients pass it on, `speak --ws` takes --speed."""

    def generated() -> int:  # samples the engine made since the last call
        made = sum(_frames(q.text) for q in engine.requests) * FRAME_SAMPLES
        engine.requests.clear()
        return made

    engine.requests.clear()
    with TTSClient(url) as client:
        fast = b"".join(client.speak_streamed(PIECES, speed=2.0))
    assert len(fast) == generated()  # half the samples, at 2 bytes each

    async def slow() -> tuple[int, float]:
        async with AsyncTTSClient(url) as client, client.speech_socket() as socket:
            context = socket.context(speed=0.5)
            for piece in PIECES:
                await context.send(piece)
            await context.close()
            events = [event async for event in context.events()]
            return sum(len(e.audio) for e in events), context.done.duration_ms

    size, duration_ms = asyncio.run(slow())
    made = generated()
    assert size == made * 4 and duration_ms == pytest.approx(made * 2 * 1000 / SAMPLE_RATE, abs=1e-3)
    out = tmp_path / "fast.wav"
    result = CliRunner().invoke(cli, ["--url", url, "speak", "Hello from a pipe.", "--ws", "--speed", "2",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    pcm, rate = read_wav(out.read_bytes())
    assert rate == SAMPLE_RATE and len(pcm) == generated() // 2
