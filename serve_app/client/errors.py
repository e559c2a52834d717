"""Typed errors raised by the clients, carrying the server's status and message.

Callers branch on the class (retry on `OverloadedError`, fix the input on `BadRequestError`) instead of
parsing status codes; `detail` keeps the server's raw `{"detail": ...}` payload for anything finer.
"""
from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx


class TTSError(Exception):
    """Any failure talking to the service; `status_code` is None when no HTTP response came back."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        detail: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.detail = detail if detail is not None else message
        self.request_id = request_id

    def __str__(self) -> str:
        prefix = f"HTTP {self.status_code}: " if self.status_code is not None else ""
        return f"{prefix}{self.message}"


class TTSConnectionError(TTSError):
    """The server could not be reached (refused, DNS, reset)."""


class TTSTimeoutError(TTSConnectionError):
    """The server did not answer within the client's timeout."""


class BadRequestError(TTSError):
    """400: the input is wrong (bad base64, not audio, ...)."""


class AuthenticationError(TTSError):
    """401: the server wants an API key (`api_key=` / `--api-key`) and got none or a wrong one."""


class NotFoundError(TTSError):
    """404: unknown voice, session or route."""


class ConflictError(TTSError):
    """409: a voice name that is ambiguous or taken by a built-in voice, or a closed stream context."""


class TooLargeError(TTSError):
    """413: text, body or audio over the server's limits."""


class UnprocessableEntityError(TTSError):
    """422: the request does not match the schema (empty text, speaker out of range, ...)."""


class RetryableError(TTSError):
    """A status worth retrying later; `retry_after` is the server's hint in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class RateLimitError(RetryableError):
    """429: too many requests from this caller."""


class OverloadedError(RetryableError):
    """503: the engine has no free slot or memory, or the deployment shed the request."""


class ServerError(TTSError):
    """Any other 5xx: a fault on the server side."""


_BY_STATUS: dict[int, type[TTSError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: TooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: OverloadedError,
}


def error_for_status(message: str, status: int | None, **kwargs: Any) -> TTSError:
    """The typed error for an HTTP status (or a WebSocket error message's code, the same statuses)."""
    cls = _BY_STATUS.get(status) if status is not None else None
    if cls is None:
        cls = ServerError if status is not None and status >= 500 else TTSError
    return cls(message, status_code=status, **kwargs)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header given as delta-seconds or as an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _format_detail(detail: Any) -> str:
    """One readable line from FastAPI's detail: a string, or a list of pydantic errors."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if isinstance(detail, dict) and "message" in detail:
        return str(detail["message"])
    return str(detail)


def error_from_response(response: httpx.Response) -> TTSError:
    """Build the typed error for a non-2xx response whose body has been read."""
    status = response.status_code
    detail: Any = None
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        detail = response.text.strip() or response.reason_phrase
    message = _format_detail(detail) or response.reason_phrase
    if "html" in response.headers.get("content-type", ""):  # a proxy's error page: `detail` keeps it
        message = f"{response.reason_phrase} (an HTML page, from a proxy in front of the service?)"
    kwargs: dict[str, Any] = {"detail": detail, "request_id": response.headers.get("x-request-id")}
    if issubclass(_BY_STATUS.get(status, TTSError), RetryableError):
        kwargs["retry_after"] = parse_retry_after(response.headers.get("retry-after"))
    if response.is_redirect:  # not followed: a POST would be re-sent as a GET, or its body twice
        message = f"redirected to {response.headers.get('location')}: use that URL as the base URL"
    return error_for_status(message, status, **kwargs)


def error_from_transport(exc: httpx.TransportError, url: str) -> TTSError:
    """Wrap httpx's transport failures so callers catch one hierarchy."""
    if isinstance(exc, httpx.TimeoutException):
        return TTSTimeoutError(f"timed out talking to {url}: {exc}")
    return TTSConnectionError(f"cannot reach {url}: {exc}")
