"""The request id: accepted from the caller's `X-Request-ID` when it is log-safe, else made up, and
visible to every log line written while the request is served."""

from __future__ import annotations

import contextvars
import re
import uuid

REQUEST_ID_HEADER = "X-Request-ID"

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("csm_request_id", default=None)
_SAFE_REQUEST_ID = re.compile(r"^[\w.:@/+=-]{1,128}$")  # no spaces or control characters to echo


def current_request_id() -> str | None:
    """The id of the HTTP request being served in this task, if any."""
    return request_id_var.get()


def clean_request_id(value: str | None) -> str:
    """Keep a caller's id when it is short and log-safe; otherwise make a new one."""
    if value and _SAFE_REQUEST_ID.match(value):
        return value
    return uuid.uuid4().hex
