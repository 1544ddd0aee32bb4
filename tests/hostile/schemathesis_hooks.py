"""Schemathesis hooks for the fuzz run (loaded through SCHEMATHESIS_HOOKS).

Two parameters of the OpenAPI document are tokens with a format of their own, and schemathesis
is told how to make valid ones:

- `cursor` (format `page-cursor`) is opaque and tamper-checked: an arbitrary string is rightly a
  400, so a schema-valid cursor is one the service could have issued: any order id, tagged with
  the service's CURSOR_SECRET.
- `If-Match` (format `entity-tag`): `*` or a version in quotes. Its pattern needs `"` and `*`,
  and schemathesis's coverage phase draws header values from letters and digits only; without a
  format strategy it finds no valid value and sends a wrong-type probe (`0`) as a valid one.
"""

from __future__ import annotations

import os

import schemathesis
from hypothesis import strategies as st

from service.cursor import CursorCodec

CURSOR_SECRET = os.environ.get("CURSOR_SECRET", "orders-service-cursor-v1")

schemathesis.openapi.format("page-cursor", st.uuids().map(CursorCodec(CURSOR_SECRET.encode()).encode))
schemathesis.openapi.format(
    "entity-tag",
    st.one_of(
        st.just("*"),
        st.integers(min_value=1, max_value=3).map(lambda v: f'"{v}"'),
        st.integers(min_value=1, max_value=10**19 - 1).map(lambda v: f'W/"{v}"'),
    ),
)
