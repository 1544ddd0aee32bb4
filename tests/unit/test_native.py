"""native/: the compiled module and its pure-Python twin give the same answers."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

import native
from native import _pure

try:
    from native import _speedups
except ImportError:  # pragma: no cover - only where the extension could not be built
    _speedups = None  # type: ignore[assignment]

IMPLEMENTATIONS = [pytest.param(_pure, id="pure")]
if _speedups is not None:
    IMPLEMENTATIONS.append(pytest.param(_speedups, id="cython"))


def test_the_compiled_module_is_built_and_active_unless_disabled() -> None:
    import os

    if os.environ.get("ORDERS_NATIVE") == "0":
        assert native.ACTIVE == "pure-python"
    else:
        assert _speedups is not None, "native/_speedups was not compiled by the package build"
        assert native.ACTIVE == "cython"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(st.text(), st.text(max_size=20), st.integers(100, 599), st.floats(0, 1e6, allow_nan=False))
def test_access_line_is_json_with_the_given_values(impl, path, request_id, status, duration) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    line = impl.format_access_line(now, request_id, "http", "GET", path, status, "NOT_FOUND", duration)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    parsed = json.loads(line)
    assert parsed["path"] == path.encode("utf-8", "backslashreplace").decode("utf-8")
    assert parsed["request_id"] == request_id.encode("utf-8", "backslashreplace").decode("utf-8")
    assert parsed["status"] == status and abs(parsed["duration_ms"] - duration) <= 0.0005 + duration * 1e-12
    assert parsed["code"] == "NOT_FOUND"
    assert parsed["message"] == "request" and parsed["level"] == "INFO" and parsed["time"].endswith("Z")


@pytest.mark.skipif(_speedups is None, reason="extension not built")
@given(
    st.text(),
    st.text(max_size=40),
    st.integers(100, 599),
    st.floats(0, 1e6, allow_nan=False),
    st.floats(0, 4e9, allow_nan=False),
)
def test_twins_agree_byte_for_byte(path, request_id, status, duration, now) -> None:  # type: ignore[no-untyped-def]
    args = (now, request_id, "grpc", "POST", path, status, request_id, duration)
    assert _pure.format_access_line(*args) == _speedups.format_access_line(*args)
    assert _pure.iso_millis(now) == _speedups.iso_millis(now)
    assert _pure.json_string(path) == _speedups.json_string(path)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(st.uuids())
def test_parse_uuid_matches_the_standard_library(impl, value: uuid.UUID) -> None:  # type: ignore[no-untyped-def]
    for text in (str(value), str(value).upper()):
        parsed = impl.parse_uuid(text)
        assert parsed == value and hash(parsed) == hash(value) and str(parsed) == str(value)
        assert isinstance(parsed, uuid.UUID)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "text",
    [
        "",
        "x" * 36,
        "01a20ba0-35d8-7157-9b0d-5633ba45ed1",
        "01a20ba035d8-7157-9b0d-5633ba45ed1cc",
        "01a20ba0-35d8-7157-9b0d-5633ba45ed1g",
        "01a20ba0-35d8-7157-9b0d+5633ba45ed1c",
    ],
)
def test_parse_uuid_rejects_non_canonical_text(impl, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        impl.parse_uuid(text)
