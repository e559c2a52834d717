"""One error shape for every failure: `{"detail": ...}` with the right 4xx/503, never a 500 for bad input.

Routes raise `ApiError` (or let audio errors through); the handlers here turn them into JSON.
Paths under `/v1/` also carry OpenAI's `{"error": {"message", "type", "code"}}` object so OpenAI SDKs
show the message. Engine calls go through `engine_errors()`, which maps overload-like failures
(EngineOverloadedError, CUDA OOM, Ray backpressure) to 503 with Retry-After.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.api.state import StateUnavailableError
from serve_app.audio.decode import AudioInputError, AudioTooLargeError
from serve_app.engine.types import EngineOverloadedError, PromptTooLongError

__all__ = ["ApiError", "engine_error", "engine_errors", "error_body", "install_error_handlers", "request_id_of"]

logger = logging.getLogger("serve_app.api")

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    422: "invalid_request_error",
    503: "server_error",
}


class ApiError(Exception):
    """An HTTP error with a message for the user."""

    def __init__(self, status_code: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = headers or {}


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "")


def _overload_types() -> tuple[type[BaseException], ...]:
    """Failures that mean "try again later"; torch and Ray are consulted only if already loaded
    (an error of theirs cannot exist otherwise, and the API never imports them itself)."""
    types: list[type[BaseException]] = [EngineOverloadedError, MemoryError]
    torch = sys.modules.get("torch")
    if torch is not None:
        types.append(torch.cuda.OutOfMemoryError)
    ray_exceptions = sys.modules.get("ray.serve.exceptions")
    if ray_exceptions is not None:
        types.append(ray_exceptions.BackPressureError)
    return tuple(types)


def engine_error(exc: BaseException, retry_after_s: int) -> ApiError | None:
    """The API error for one of the engine's expected failures (None: not one of them): also for a
    failure that comes after a response began (a stream's later chunk), where it is sent in-band."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, PromptTooLongError):
        return ApiError(413, f"too long for the model: {exc}")
    if isinstance(exc, _overload_types()):
        retry = getattr(exc, "retry_after_s", None)
        retry = retry_after_s if retry is None else retry
        return ApiError(
            503,
            f"the speech engine is overloaded, retry later ({exc})",
            {"Retry-After": str(max(0, round(retry)))},
        )
    return None


@contextlib.asynccontextmanager
async def engine_errors(retry_after_s: int) -> AsyncIterator[None]:
    """Map the engine's expected failures to API errors around an engine call."""
    try:
        yield
    except ApiError:
        raise
    except Exception as exc:
        mapped = engine_error(exc, retry_after_s)
        if mapped is None:
            raise
        raise mapped from exc


def _error_response(
    request: Request, status: int, detail: Any, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, status, detail), status_code=status, headers=headers)


def error_body(path: str, status: int, detail: Any) -> dict[str, Any]:
    """`{"detail": ...}`, with OpenAI's error object too under `/v1/`."""
    body: dict[str, Any] = {"detail": jsonable_encoder(detail)}
    if path.startswith("/v1/"):
        message = (
            detail
            if isinstance(detail, str)
            else "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in detail)
        )
        body["error"] = {
            "message": message,
            "type": _OPENAI_TYPES.get(status, "api_error"),
            "param": None,
            "code": None,
        }
    return body


MAX_ECHOED_INPUT_CHARS = 256


def _renderable(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error the 422 body can carry: its `input` is echoed only when it is short and
    valid JSON (NaN, Infinity, lone surrogates or a megabyte of text would break or bloat the answer)."""
    out = {key: value for key, value in error.items() if key not in ("input", "ctx", "url")}
    for key in ("input", "ctx"):
        if key not in error:
            continue
        try:
            value = jsonable_encoder(error[key])
            text = json.dumps(value, allow_nan=False, ensure_ascii=False)
            text.encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError):
            continue
        if len(text) <= MAX_ECHOED_INPUT_CHARS:
            out[key] = value
    return out


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(request, exc.status_code, exc.detail, exc.headers)

    @app.exception_handler(AudioInputError)
    async def _audio_error(request: Request, exc: AudioInputError) -> JSONResponse:
        return _error_response(request, 413 if isinstance(exc, AudioTooLargeError) else 400, str(exc))

    @app.exception_handler(StateUnavailableError)
    async def _state_error(request: Request, exc: StateUnavailableError) -> JSONResponse:
        retry = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        return _error_response(request, 503, f"session state unavailable, retry later ({exc})", retry)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(request, 422, [_renderable(error) for error in exc.errors()])

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(request, exc.status_code, exc.detail, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # What `UnexpectedErrorMiddleware` raised on (a response already started) or never saw (an
        # error in the middleware outside it). The request-id context has ended here: name it.
        request_id = request_id_of(request)
        logger.exception(
            "unhandled error in %s %s (request %s)", request.method, request.url.path, request_id,
            extra={"request_id": request_id},
        )
        # this handler runs outside all middleware, so the request id header is set here
        return _error_response(
            request, 500, f"internal error (request id {request_id})", {"X-Request-ID": request_id}
        )
