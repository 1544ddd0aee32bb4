"""Compiled hot paths with pure-Python twins.

Profiling the service under load (see benchmarks/RESULTS.md) put two pieces of our own Python
on the request path that are CPU-bound and worth compiling: the access-log line (the logging
module plus JSON formatting cost ~26 us a request) and parsing the UUID strings psqlpy returns
(~2.7 us a row, 100 per list page). `_speedups` (Cython, built at install) is used when present;
`ORDERS_NATIVE=0` forces the pure-Python twins in `_pure`.
"""

from __future__ import annotations

import os

from native import _pure

ACTIVE = "pure-python"
format_access_line = _pure.format_access_line
iso_millis = _pure.iso_millis
parse_uuid = _pure.parse_uuid
json_string = _pure.json_string

if os.environ.get("ORDERS_NATIVE", "1") != "0":
    try:
        from native import _speedups
    except ImportError:  # not compiled in this install: the twins serve
        pass
    else:
        ACTIVE = "cython"
        format_access_line = _speedups.format_access_line
        iso_millis = _speedups.iso_millis
        parse_uuid = _speedups.parse_uuid
        json_string = _speedups.json_string

__all__ = ["ACTIVE", "format_access_line", "iso_millis", "json_string", "parse_uuid"]
