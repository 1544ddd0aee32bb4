"""The watch rules of the service layer: cursor format, resume exactness, id validation."""

from __future__ import annotations

import pytest

from service.domain import ChangesUnavailable, CursorExpired, ValidationFailed
from service.ports import FeedBounds
from service.validation import check_resume, parse_change_cursor
from tests.unit.fakes import make_service


@pytest.mark.parametrize("raw", ["1-0", "1796356813520-0", "0-0", "18446744073709551615-18446744073709551615"])
def test_well_formed_cursors_parse(raw: str) -> None:
    assert parse_change_cursor(raw) is not None


@pytest.mark.parametrize("raw", ["", "1", "-1", "1-", "a-0", "1-0-0", "\u0661-0", "18446744073709551616-0", "1 -0"])
def test_malformed_cursors_do_not(raw: str) -> None:
    assert parse_change_cursor(raw) is None


def _check(cursor: str, first: str | None, last: str, trimmed: bool = True) -> None:
    position = parse_change_cursor(cursor)
    assert position is not None
    check_resume(cursor, position, FeedBounds(first=first, last=last, trimmed=trimmed))


def test_a_cursor_within_retention_resumes() -> None:
    _check("5-0", first="3-0", last="9-0")
    _check("9-0", first="3-0", last="9-0")
    _check("9-0", first=None, last="9-0")  # everything trimmed, but nothing after the cursor


def test_a_cursor_older_than_the_oldest_entry_is_expired() -> None:
    with pytest.raises(CursorExpired):
        _check("2-0", first="3-0", last="9-0")
    with pytest.raises(CursorExpired):
        _check("5-0", first=None, last="9-0")


def test_a_never_trimmed_stream_holds_every_change() -> None:
    _check("0-0", first="3-0", last="9-0", trimmed=False)


def test_a_cursor_ahead_of_the_stream_is_invalid() -> None:
    with pytest.raises(ValidationFailed, match="ahead of the change feed"):
        _check("10-0", first="3-0", last="9-0")


async def test_watch_validates_before_it_needs_a_feed() -> None:
    service, _, _ = make_service()
    with pytest.raises(ValidationFailed) as caught:
        await service.watch(["nope", *["x"] * 100], "yesterday")
    fields = [v.field for v in caught.value.violations]
    assert fields.count("after") == 1 and "order_id" in fields
    with pytest.raises(ChangesUnavailable):
        await service.watch([], None)
