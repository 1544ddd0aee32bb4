"""One JSON object per log line on stdout, with the request id of the current request."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import msgspec

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
role_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("role", default=None)

# Attributes every LogRecord has; anything else passed with `extra=` goes into the JSON line.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_encode = msgspec.json.Encoder().encode


def _iso_time(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


def format_record(record: logging.LogRecord) -> bytes:
    line: dict[str, Any] = {
        "time": _iso_time(record.created),
        "level": record.levelname,
        "message": record.getMessage(),
        "logger": record.name,
    }
    request_id = request_id_var.get()
    if request_id is not None:
        line["request_id"] = request_id
    role = role_var.get()
    if role is not None:
        line["role"] = role
    for key, value in record.__dict__.items():
        if key not in _STANDARD_ATTRS and not key.startswith("_"):
            line[key] = value
    if record.exc_info:
        line["exception"] = logging.Formatter().formatException(record.exc_info)
    return _encode(line) + b"\n"


class JsonLineHandler(logging.Handler):
    """Writes each record as one JSON line with a single write call (lines never interleave)."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self._stream = stream if stream is not None else sys.stdout

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = format_record(record)
            buffer = getattr(self._stream, "buffer", None)
            if buffer is not None:
                buffer.write(data)
                buffer.flush()
            else:
                self._stream.write(data.decode())
                self._stream.flush()
        except Exception:
            self.handleError(record)


def configure_logging(level: str, role: str | None = None) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(JsonLineHandler())
    root.setLevel(level)
    if role is not None:
        role_var.set(role)
    for noisy in ("granian", "granian.access", "_granian"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
