"""Python clients for csm-serve: `TTSClient` (blocking) and `AsyncTTSClient` (asyncio).

    from serve_app.client import TTSClient
    with TTSClient("http://127.0.0.1:8000") as client:
        wav = client.speak("Hello there.", speaker=0)
"""
from serve_app.client.async_client import AsyncTTSClient
from serve_app.client.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    OverloadedError,
    RateLimitError,
    RetryableError,
    ServerError,
    TooLargeError,
    TTSConnectionError,
    TTSError,
    TTSTimeoutError,
    UnprocessableEntityError,
)
from serve_app.client.stream_input import (
    AsyncSpeechContext,
    AsyncSpeechSocket,
    AudioEvent,
    Done,
    SpeechContext,
    SpeechSocket,
)
from serve_app.client.sync import DEFAULT_URL, TTSClient

__all__ = [
    "DEFAULT_URL",
    "AsyncSpeechContext",
    "AsyncSpeechSocket",
    "AsyncTTSClient",
    "AudioEvent",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "Done",
    "NotFoundError",
    "OverloadedError",
    "RateLimitError",
    "RetryableError",
    "ServerError",
    "SpeechContext",
    "SpeechSocket",
    "TTSClient",
    "TTSConnectionError",
    "TTSError",
    "TTSTimeoutError",
    "TooLargeError",
    "UnprocessableEntityError",
]
