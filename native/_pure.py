"""Pure-Python twins of the compiled functions in _speedups.pyx: same inputs, same outputs."""

from __future__ import annotations

import re
import time
import uuid

_NEEDS_ESCAPE = re.compile(rb'["\\\x00-\x1f]')
_SHORT = {0x22: b'\\"', 0x5C: b"\\\\", 0x08: b"\\b", 0x0C: b"\\f", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t"}
_HEX = "0123456789abcdef"


def _escape_byte(match: re.Match[bytes]) -> bytes:
    code = match.group()[0]
    return _SHORT.get(code) or b"\\u00" + _HEX[code >> 4].encode() + _HEX[code & 15].encode()


def json_string(text: str) -> bytes:
    """`text` as a quoted JSON string (UTF-8; unencodable code points as backslash escapes)."""
    raw = text.encode("utf-8", "backslashreplace")
    if _NEEDS_ESCAPE.search(raw):
        raw = _NEEDS_ESCAPE.sub(_escape_byte, raw)
    return b'"' + raw + b'"'


def iso_millis(now: float) -> bytes:
    seconds = int(now)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((now - seconds) * 1000):03d}Z").encode()


def format_access_line(
    now: float, request_id: str, role: str, method: str, path: str, status: int, code: str, duration_ms: float
) -> bytes:
    """One JSON access-log line, newline included, in the shape of every other log line."""
    return b"".join(
        (
            b'{"time":"',
            iso_millis(now),
            b'","level":"INFO","message":"request","logger":"orders.access","request_id":',
            json_string(request_id),
            b',"role":',
            json_string(role),
            b',"method":',
            json_string(method),
            b',"path":',
            json_string(path),
            b',"status":',
            str(status).encode(),
            b',"code":',
            json_string(code),
            b',"duration_ms":',
            f"{duration_ms:.3f}".encode(),
            b"}\n",
        )
    )


_UUID_NEW = uuid.UUID.__new__
# UUID is immutable (its __setattr__ raises): its slots are filled through their descriptors.
_SET_INT = uuid.UUID.__dict__["int"].__set__
_SET_SAFE = uuid.UUID.__dict__["is_safe"].__set__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown


def parse_uuid(text: str) -> uuid.UUID:
    """A canonical 36-character UUID string (as PostgreSQL returns it) to uuid.UUID; ValueError otherwise."""
    if len(text) != 36 or text[8] != "-" or text[13] != "-" or text[18] != "-" or text[23] != "-":
        raise ValueError(f"not a canonical UUID: {text!r}")
    value = int(text[:8] + text[9:13] + text[14:18] + text[19:23] + text[24:], 16)
    parsed = _UUID_NEW(uuid.UUID)
    _SET_INT(parsed, value)
    _SET_SAFE(parsed, _SAFE_UNKNOWN)
    return parsed
