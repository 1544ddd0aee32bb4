"""Each native function against its pure-Python twin (and the standard library where one exists)."""

from __future__ import annotations

import uuid

import pytest

from native import _pure

try:
    from native import _speedups
except ImportError:  # pragma: no cover
    _speedups = None  # type: ignore[assignment]

IMPLS = [pytest.param(_pure, id="pure")] + ([pytest.param(_speedups, id="cython")] if _speedups else [])
UUID_TEXT = "01a20ba0-35d8-7157-9b0d-5633ba45ed1c"
PATH = "/orders/01a20ba0-35d8-7157-9b0d-5633ba45ed1c"


@pytest.mark.parametrize("impl", IMPLS)
def test_parse_uuid(benchmark, impl) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(impl.parse_uuid, UUID_TEXT) == uuid.UUID(UUID_TEXT)


def test_parse_uuid_stdlib(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(uuid.UUID, UUID_TEXT).version == 7


@pytest.mark.parametrize("impl", IMPLS)
def test_format_access_line(benchmark, impl) -> None:  # type: ignore[no-untyped-def]
    line = benchmark(impl.format_access_line, 1764000000.25, "0190-request", "http", "GET", PATH, 200, "OK", 1.2345)
    assert line.endswith(b"\n")
