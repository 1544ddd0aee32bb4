"""The watch rules of the service layer: cursor format, resume exactness, id validation, and
which owners' changes a watcher sees."""

from __future__ import annotations

import uuid

import pytest

from service.access import RequestContext
from service.domain import (
    SCOPE_ADMIN,
    SCOPE_READ,
    SCOPE_WRITE,
    ChangesUnavailable,
    CursorExpired,
    PermissionDenied,
    Principal,
    ValidationFailed,
)
from service.orders import OrderService
from service.ports import FeedBounds, FeedEntry, WatchSpec
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


# ---- who sees which owner's changes ---------------------------------------------------------


class NoChanges:
    """A subscription that never has a change."""

    async def changes(self, wait_seconds: float) -> list[FeedEntry]:
        return []

    @property
    def ending(self) -> bool:
        return False

    def close(self) -> None:
        return None


class RecordingFeed:
    """A ChangeFeed that keeps the WatchSpec each watch was given."""

    def __init__(self) -> None:
        self.specs: list[WatchSpec] = []

    async def bounds(self) -> FeedBounds:
        return FeedBounds(first="1-0", last="9-0", trimmed=False)

    async def subscribe(self, after: str | None, spec: WatchSpec) -> NoChanges:
        self.specs.append(spec)
        return NoChanges()


def caller(owner: str, *scopes: str) -> RequestContext:
    return RequestContext(principal=Principal(owner=owner, actor=owner, scopes=frozenset(scopes)))


ALICE = caller("alice", SCOPE_READ, SCOPE_WRITE)
BOB = caller("bob", SCOPE_READ, SCOPE_WRITE)
ADMIN = caller("ops", SCOPE_READ, SCOPE_ADMIN)


async def watching_service() -> tuple[OrderService, RecordingFeed, str]:
    """A service on a recording feed, with one order of bob's (its id returned)."""
    feed = RecordingFeed()
    service, _, _ = make_service(changes=feed)
    created = await service.create("book", 1, ctx=BOB)
    return service, feed, str(created.order.id)


async def test_a_reader_sees_only_its_own_orders_changes() -> None:
    service, feed, _ = await watching_service()
    await service.watch([], None, ctx=ALICE)
    visible = feed.specs[-1].visible
    assert visible is not None
    assert visible("alice")
    assert not visible("bob")
    assert not visible(None)  # written before events named their owner: admins only


async def test_an_admin_sees_every_owners_changes() -> None:
    service, feed, bobs = await watching_service()
    await service.watch([], None, ctx=ADMIN)
    assert feed.specs[-1].visible is None
    await service.watch([bobs], None, ctx=ADMIN)  # and may name another owner's order
    assert feed.specs[-1] == WatchSpec(frozenset([bobs]), None)


async def test_without_orders_read_a_watch_is_refused_before_anything_else() -> None:
    service, feed, _ = await watching_service()
    with pytest.raises(PermissionDenied) as caught:
        await service.watch(["nope"], "yesterday", ctx=caller("alice", SCOPE_WRITE))
    assert caught.value.scope == SCOPE_READ
    assert feed.specs == []


async def test_another_owners_order_id_is_refused_exactly_like_an_unknown_one() -> None:
    service, feed, bobs = await watching_service()
    unknown = str(uuid.uuid4())
    with pytest.raises(ValidationFailed) as theirs:
        await service.watch([bobs], None, ctx=ALICE)
    with pytest.raises(ValidationFailed) as nobodys:
        await service.watch([unknown], None, ctx=ALICE)
    assert str(theirs.value).replace(bobs, "<id>") == str(nobodys.value).replace(unknown, "<id>")
    assert theirs.value.violations[0].message == f"order {bobs} not found"
    assert feed.specs == []
    await service.watch([bobs], None, ctx=BOB)  # its owner may
    assert feed.specs[-1].order_ids == frozenset([bobs])


async def test_resuming_on_another_owners_order_id_shows_none_of_its_changes() -> None:
    # Resuming, ids are not looked up (a deleted order's deletion may be to come): the owner test
    # still hides every change of an order that is not the caller's.
    service, feed, bobs = await watching_service()
    await service.watch([bobs], "1-0", ctx=ALICE)
    spec = feed.specs[-1]
    assert spec.order_ids == frozenset([bobs])
    assert spec.visible is not None and not spec.visible("bob")
