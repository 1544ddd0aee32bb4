# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twins of native/_pure.py (same inputs, same outputs; the same tests run against both)."""

import uuid

from libc.stdio cimport snprintf
from libc.time cimport time_t, tm

cdef extern from "time.h" nogil:
    tm *gmtime_r(const time_t *timep, tm *result)

cdef bytes _HEX = b"0123456789abcdef"


cdef bytes _escape(str text):
    cdef bytes raw = text.encode("utf-8", "backslashreplace")
    cdef const unsigned char[:] view = raw
    cdef Py_ssize_t i, n = len(raw)
    cdef unsigned char c
    cdef bint plain = True
    for i in range(n):
        c = view[i]
        if c < 0x20 or c == 0x22 or c == 0x5C:
            plain = False
            break
    if plain:
        return b'"' + raw + b'"'
    cdef bytearray out = bytearray(b'"')
    for i in range(n):
        c = view[i]
        if c == 0x22:
            out += b'\\"'
        elif c == 0x5C:
            out += b"\\\\"
        elif c == 0x08:
            out += b"\\b"
        elif c == 0x0C:
            out += b"\\f"
        elif c == 0x0A:
            out += b"\\n"
        elif c == 0x0D:
            out += b"\\r"
        elif c == 0x09:
            out += b"\\t"
        elif c < 0x20:
            out += b"\\u00"
            out.append(_HEX[c >> 4])
            out.append(_HEX[c & 15])
        else:
            out.append(c)
    out += b'"'
    return bytes(out)


def json_string(str text):
    return _escape(text)


cdef bytes _iso_millis(double now):
    cdef time_t seconds = <time_t>now
    cdef tm parts
    cdef char buffer[32]
    cdef int millis = <int>((now - <double>seconds) * 1000)
    gmtime_r(&seconds, &parts)
    cdef int length = snprintf(buffer, sizeof(buffer), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                               parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
                               parts.tm_hour, parts.tm_min, parts.tm_sec, millis)
    return buffer[:length]


def iso_millis(double now):
    return _iso_millis(now)


def format_access_line(double now, str request_id, str role, str method, str path, long status, str code,
                       double duration_ms):
    cdef char number[24]
    cdef char duration[48]
    cdef int number_length = snprintf(number, sizeof(number), "%ld", status)
    cdef int duration_length = snprintf(duration, sizeof(duration), ",\"duration_ms\":%.3f}\n", duration_ms)
    return b"".join((
        b'{"time":"', _iso_millis(now),
        b'","level":"INFO","message":"request","logger":"orders.access","request_id":', _escape(request_id),
        b',"role":', _escape(role),
        b',"method":', _escape(method),
        b',"path":', _escape(path),
        b',"status":', number[:number_length],
        b',"code":', _escape(code),
        duration[:duration_length],
    ))


cdef object _UUID = uuid.UUID
cdef object _UUID_NEW = uuid.UUID.__new__
# UUID is immutable (its __setattr__ raises): its slots are filled through their descriptors.
cdef object _SET_INT = uuid.UUID.__dict__["int"].__set__
cdef object _SET_SAFE = uuid.UUID.__dict__["is_safe"].__set__
cdef object _SAFE_UNKNOWN = uuid.SafeUUID.unknown


cdef inline int _nibble(Py_UCS4 c) except -1:
    cdef unsigned int code = <unsigned int>c
    if 48 <= code <= 57:
        return <int>(code - 48)
    if 97 <= code <= 102:
        return <int>(code - 87)
    if 65 <= code <= 70:
        return <int>(code - 55)
    raise ValueError("not a hexadecimal digit")


def parse_uuid(str text):
    if len(text) != 36 or text[8] != "-" or text[13] != "-" or text[18] != "-" or text[23] != "-":
        raise ValueError(f"not a canonical UUID: {text!r}")
    cdef unsigned long long high = 0, low = 0
    cdef Py_ssize_t i
    cdef int digits = 0
    cdef Py_UCS4 c
    try:
        for i in range(36):
            if i == 8 or i == 13 or i == 18 or i == 23:
                continue
            c = text[i]
            if digits < 16:
                high = (high << 4) | _nibble(c)
            else:
                low = (low << 4) | _nibble(c)
            digits += 1
    except ValueError:
        raise ValueError(f"not a canonical UUID: {text!r}") from None
    parsed = _UUID_NEW(_UUID)
    _SET_INT(parsed, (<object>high << 64) | <object>low)
    _SET_SAFE(parsed, _SAFE_UNKNOWN)
    return parsed
