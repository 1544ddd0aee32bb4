"""One JSON object per log line on stdout, with the request id of the current request."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import select
import sys
import time
from typing import Any

import msgspec

import native

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
role_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("role", default=None)


# Attributes every LogRecord has; anything else passed with `extra=` goes into the JSON line.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_encode = msgspec.json.Encoder().encode


def format_record(record: logging.LogRecord) -> bytes:
    line: dict[str, Any] = {
        "time": native.iso_millis(record.created).decode(),
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
    """Writes each record as one JSON line; lines never interleave with other processes' lines.

    Inside a running event loop, the lines of one loop turn are written together at its end
    (one write per turn instead of one per line); elsewhere each line is written at once. Every
    write is at most PIPE_BUF bytes of whole lines, which the kernel keeps in one piece.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self._stream = stream if stream is not None else sys.stdout
        self._pending: list[bytes] = []
        self._flush_scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(format_record(record))
        except Exception:
            self.handleError(record)

    def write_line(self, line: bytes) -> None:
        """Queue one complete JSON line (newline included) for writing."""
        self._pending.append(line)
        loop = asyncio._get_running_loop()
        if loop is None:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        chunk = b""
        for line in lines:
            if chunk and len(chunk) + len(line) > select.PIPE_BUF:
                self._write(chunk)
                chunk = b""
            chunk += line
        self._write(chunk)

    def _write(self, data: bytes) -> None:
        buffer = getattr(self._stream, "buffer", None)
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:
            self._stream.write(data.decode())
            self._stream.flush()

    def close(self) -> None:
        self.flush()
        super().close()


_access_log = logging.getLogger("orders.access")
_line_sink: JsonLineHandler | None = None


def log_access(method: str, path: str, status: int, code: str, seconds: float) -> None:
    """The access line of one REST request or gRPC call: the same JSON shape as every log line,
    formatted by `native` and handed straight to the line writer (the logging module's record
    machinery cost more than the rest of a cached GET)."""
    if not _access_log.isEnabledFor(logging.INFO):
        return
    sink = _line_sink
    if sink is None:  # logging not configured by us (e.g. embedded in tests): use it plainly
        _access_log.info(
            "request",
            extra={
                "method": method,
                "path": path,
                "status": status,
                "code": code,
                "duration_ms": round(seconds * 1000, 3),
            },
        )
        return
    sink.write_line(
        native.format_access_line(
            time.time(),
            request_id_var.get() or "",
            role_var.get() or "",
            method,
            path,
            status,
            code,
            seconds * 1000,
        )
    )


def configure_logging(level: str, role: str | None = None) -> None:
    global _line_sink
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    _line_sink = JsonLineHandler()
    root.addHandler(_line_sink)
    root.setLevel(level)
    if role is not None:
        role_var.set(role)
    for noisy in ("granian", "granian.access", "_granian"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
