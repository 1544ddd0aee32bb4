"""Schemathesis hooks for the fuzz run (loaded through SCHEMATHESIS_HOOKS).

Two parameters of the OpenAPI document are tokens with a format of their own, and schemathesis
is told how to make valid ones:

- `cursor` (format `page-cursor`) is opaque and tamper-checked: an arbitrary string is rightly a
  400, so a schema-valid cursor is one the service could have issued: any order id, tagged with
  the service's cursor key (CURSOR_SECRET's first, else the one `serve` generated in DATA_DIR).
- `If-Match` (format `entity-tag`): `*` or a version in quotes. Its pattern needs `"` and `*`,
  and schemathesis's coverage phase draws header values from letters and digits only; without a
  format strategy it finds no valid value and sends a wrong-type probe (`0`) as a valid one.
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from service.config import cursor_keys, load_settings
from service.cursor import CursorCodec

CURSOR_KEY = cursor_keys(load_settings())[0]

schemathesis.openapi.format("page-cursor", st.uuids().map(CursorCodec(CURSOR_KEY).encode))
schemathesis.openapi.format(
    "entity-tag",
    st.one_of(
        st.just("*"),
        st.integers(min_value=1, max_value=3).map(lambda v: f'"{v}"'),
        st.integers(min_value=1, max_value=10**19 - 1).map(lambda v: f'W/"{v}"'),
    ),
)
