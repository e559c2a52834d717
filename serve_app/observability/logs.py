"""JSON logs: one object per line with time, level, logger, message, the request id and any `extra=`."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import sys
from typing import Any, TextIO

from serve_app.observability.request_ids import current_request_id

_UTC = _dt.timezone.utc
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

access_log = logging.getLogger("csm_serve.access")
"""One line per HTTP request (`MetricsMiddleware`)."""

_API_KEY_PARAM = re.compile(r"([?&]api_key=)[^&\s\"']*", re.IGNORECASE)
"""A key in a query string (WebSockets may send one so): uvicorn logs a socket's path with its query."""


def redact(message: str) -> str:
    """`message` with any `api_key=` query parameter's value hidden."""
    return _API_KEY_PARAM.sub(r"\1[redacted]", message)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int | str = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's records as JSON lines to `stream` (stderr by default); returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
