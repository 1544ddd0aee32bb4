"""The service layer's rules, on the in-memory store."""

from __future__ import annotations

import msgspec
import pytest

from service.access import RequestContext
from service.domain import (
    EventType,
    IdempotencyKeyReused,
    InvalidTransition,
    OrderNotFound,
    OrderStatus,
    ValidationFailed,
    VersionMismatch,
)
from tests.unit.fakes import make_service


async def test_create_starts_pending_at_version_one_and_emits_created() -> None:
    service, store, _ = make_service()
    result = await service.create("book", 2, ctx=RequestContext(request_id="req-1"))
    order = result.order
    assert (order.product, order.quantity, order.status, order.version) == ("book", 2, OrderStatus.PENDING, 1)
    assert order.created_at == order.updated_at
    assert not result.replayed
    assert [(e.type, e.order.id, e.request_id) for e in store.outbox] == [(EventType.CREATED, order.id, "req-1")]


@pytest.mark.parametrize(
    ("product", "quantity", "fields"),
    [
        ("", 1, ["product"]),
        ("   ", 1, ["product"]),
        ("x" * 256, 1, ["product"]),
        ("ok", 0, ["quantity"]),
        ("ok", 1_000_001, ["quantity"]),
        ("ok", -5, ["quantity"]),
        ("", 0, ["product", "quantity"]),
        ("ok", 2**63, ["quantity"]),
    ],
)
async def test_create_rejects_invalid_input_naming_fields(product: str, quantity: int, fields: list[str]) -> None:
    service, store, _ = make_service()
    with pytest.raises(ValidationFailed) as caught:
        await service.create(product, quantity)
    assert [v.field for v in caught.value.violations] == fields
    assert store.orders == {} and store.outbox == []


async def test_create_accepts_boundaries() -> None:
    service, _, _ = make_service()
    assert (await service.create("x" * 255, 1_000_000)).order.quantity == 1_000_000
    assert (await service.create("y", 1)).order.quantity == 1


async def test_get_unknown_and_malformed_ids_are_not_found() -> None:
    service, _, _ = make_service()
    with pytest.raises(OrderNotFound):
        await service.get("not-a-uuid")
    with pytest.raises(OrderNotFound):
        await service.get("00000000-0000-0000-0000-000000000000")


@pytest.mark.parametrize(
    ("start", "target", "allowed"),
    [
        ("pending", "confirmed", True),
        ("pending", "cancelled", True),
        ("confirmed", "cancelled", True),
        ("confirmed", "pending", False),
        ("cancelled", "pending", False),
        ("cancelled", "confirmed", False),
    ],
)
async def test_status_transitions(start: str, target: str, allowed: bool) -> None:
    service, _, _ = make_service()
    order = (await service.create("book", 1)).order
    if start != "pending":
        order = await service.update(str(order.id), status=start)
    if allowed:
        updated = await service.update(str(order.id), status=target)
        assert updated.status == OrderStatus(target)
        assert updated.version == order.version + 1
    else:
        with pytest.raises(InvalidTransition):
            await service.update(str(order.id), status=target)


async def test_update_same_values_changes_nothing() -> None:
    service, store, _ = make_service()
    order = (await service.create("book", 1)).order
    again = await service.update(str(order.id), product="book", quantity=1, status="pending")
    assert again == order
    assert len(store.outbox) == 1


async def test_update_bumps_version_and_emits_updated() -> None:
    service, store, clock = make_service()
    order = (await service.create("book", 1)).order
    clock.advance(5)
    updated = await service.update(str(order.id), product="pen", quantity=3)
    assert (updated.product, updated.quantity, updated.version) == ("pen", 3, 2)
    assert updated.updated_at > order.updated_at and updated.created_at == order.created_at
    assert store.outbox[-1].type is EventType.UPDATED and store.outbox[-1].order == updated


async def test_update_with_stale_expected_version_fails() -> None:
    service, _, _ = make_service()
    order = (await service.create("book", 1)).order
    await service.update(str(order.id), quantity=2, expected_version=1)
    with pytest.raises(VersionMismatch) as caught:
        await service.update(str(order.id), quantity=3, expected_version=1)
    assert (caught.value.expected, caught.value.actual) == (1, 2)


async def test_update_validates_before_touching_store() -> None:
    service, _, _ = make_service()
    order = (await service.create("book", 1)).order
    with pytest.raises(ValidationFailed) as caught:
        await service.update(str(order.id), product=" ", quantity=0, status="shipped")
    assert [v.field for v in caught.value.violations] == ["product", "quantity", "status"]


async def test_delete_emits_last_state_and_respects_version() -> None:
    service, store, _ = make_service()
    order = (await service.create("book", 1)).order
    with pytest.raises(VersionMismatch):
        await service.delete(str(order.id), expected_version=7)
    await service.delete(str(order.id), expected_version=1)
    assert store.outbox[-1].type is EventType.DELETED
    assert store.outbox[-1].order.id == order.id and store.outbox[-1].order.product == "book"
    with pytest.raises(OrderNotFound):
        await service.delete(str(order.id))


async def test_list_pages_newest_first_without_gaps_or_repeats() -> None:
    service, _, _ = make_service()
    ids = [(await service.create(f"p{i}", 1)).order.id for i in range(7)]
    page = await service.list(limit=3)
    seen = [o.id for o in page.orders]
    while page.next_cursor:
        await service.create("inserted while paging", 1)
        page = await service.list(limit=3, cursor=page.next_cursor)
        seen += [o.id for o in page.orders]
    assert seen == list(reversed(ids))


async def test_list_filters_by_status_and_validates_parameters() -> None:
    service, _, _ = make_service()
    a = (await service.create("a", 1)).order
    await service.create("b", 1)
    await service.update(str(a.id), status="confirmed")
    page = await service.list(status="confirmed")
    assert [o.id for o in page.orders] == [a.id] and page.next_cursor is None
    for kwargs, field in [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"status": "shipped"}, "status"),
        ({"cursor": "garbage"}, "cursor"),
    ]:
        with pytest.raises(ValidationFailed) as caught:
            await service.list(**kwargs)  # type: ignore[arg-type]
        assert caught.value.violations[0].field == field


async def test_confirm_only_confirms_pending_orders() -> None:
    service, store, _ = make_service()
    order = (await service.create("book", 1)).order
    assert await service.confirm(str(order.id)) is True
    assert await service.confirm(str(order.id)) is False  # redelivery is harmless
    assert (await service.get(str(order.id))).status is OrderStatus.CONFIRMED
    cancelled = (await service.create("pen", 1)).order
    await service.update(str(cancelled.id), status="cancelled")
    assert await service.confirm(str(cancelled.id)) is False
    assert await service.confirm("00000000-0000-0000-0000-000000000000") is False
    assert [e.type for e in store.outbox].count(EventType.UPDATED) == 2


async def test_idempotent_create_replays_and_detects_mismatch() -> None:
    service, store, _ = make_service()
    first = await service.create("book", 2, idempotency_key="key-1")
    again = await service.create("book", 2, idempotency_key="key-1")
    assert again.replayed and again.order == first.order
    assert len(store.orders) == 1 and len(store.outbox) == 1
    with pytest.raises(IdempotencyKeyReused):
        await service.create("book", 3, idempotency_key="key-1")


async def test_idempotency_key_expires_after_ttl() -> None:
    service, store, clock = make_service(ttl_seconds=10)
    first = await service.create("book", 2, idempotency_key="k")
    clock.advance(11)
    second = await service.create("book", 2, idempotency_key="k")
    assert not second.replayed and second.order.id != first.order.id
    assert await service.purge_expired_idempotency_keys() == 0  # the key was taken over, not expired
    clock.advance(11)
    assert await service.purge_expired_idempotency_keys() == 1
    assert store.claims == {}


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\t", "é"])
async def test_invalid_idempotency_keys_are_rejected(key: str) -> None:
    service, store, _ = make_service()
    with pytest.raises(ValidationFailed) as caught:
        await service.create("book", 1, idempotency_key=key)
    assert caught.value.violations[0].field == "Idempotency-Key"
    assert store.orders == {}


async def test_failed_create_stores_no_key() -> None:
    service, _, _ = make_service()
    with pytest.raises(ValidationFailed):
        await service.create("", 1, idempotency_key="retry-me")
    result = await service.create("book", 1, idempotency_key="retry-me")
    assert not result.replayed


async def test_confirm_many_confirms_each_pending_order_once_with_its_own_context() -> None:
    service, store, _ = make_service()
    first = (await service.create("a", 1)).order
    second = (await service.create("b", 1)).order
    cancelled = (await service.create("c", 1)).order
    await service.update(str(cancelled.id), status="cancelled")
    requests = [
        (str(first.id), RequestContext(request_id="r-1")),
        (str(second.id), RequestContext(request_id="r-2")),
        (str(first.id), RequestContext(request_id="r-1-again")),  # a redelivered event in the same batch
        (str(cancelled.id), RequestContext(request_id="r-3")),
        ("0190abcd-0000-7000-8000-00000000ffff", RequestContext()),  # gone
        ("not-an-id", RequestContext()),
    ]
    assert await service.confirm_many(requests) == [True, True, False, False, False, False]
    assert (await service.get(str(first.id))).status is OrderStatus.CONFIRMED
    assert (await service.get(str(second.id))).version == 2
    confirmations = [
        (e.order.id, e.request_id)
        for e in store.outbox
        if e.type is EventType.UPDATED and e.order.status is OrderStatus.CONFIRMED
    ]
    assert confirmations == [(first.id, "r-1"), (second.id, "r-2")]
    assert await service.confirm_many(requests[:2]) == [False, False]  # redelivery is harmless


async def test_confirm_many_confirms_an_order_changed_meanwhile_under_its_row_lock() -> None:
    service, store, _ = make_service()
    order = (await service.create("a", 1)).order
    real_replace = store.replace_many_if_version

    async def a_writer_got_there_first(changes):  # type: ignore[no-untyped-def]
        await service.update(str(order.id), quantity=7)  # version 2, still pending
        return await real_replace(changes)

    store.replace_many_if_version = a_writer_got_there_first  # type: ignore[method-assign]
    assert await service.confirm_many([(str(order.id), RequestContext())]) == [True]
    current = await service.get(str(order.id))
    assert (current.status, current.quantity, current.version) == (OrderStatus.CONFIRMED, 7, 3)


def _interloping_writer(store, order_id: str, races: int):  # type: ignore[no-untyped-def]
    """Make the first `races` conditional writes of `order_id` lose to another writer (who sets
    quantity 7 + n first), and count the changes that take the row lock."""
    real_replace, real_locked = store.replace_if_version, store.change_locked
    seen = {"races": 0, "locked": 0}

    async def replace(order, expected_version, event):  # type: ignore[no-untyped-def]
        if str(order.id) == order_id and seen["races"] < races:
            seen["races"] += 1
            current = store.orders[order.id]
            theirs = msgspec.structs.replace(current, quantity=7 + seen["races"], version=current.version + 1)
            await real_replace(theirs, current.version, msgspec.structs.replace(event, order=theirs))
        return await real_replace(order, expected_version, event)

    async def locked(order_uuid, decide):  # type: ignore[no-untyped-def]
        seen["locked"] += 1
        return await real_locked(order_uuid, decide)

    store.replace_if_version, store.change_locked = replace, locked
    return seen


async def test_a_change_that_loses_one_race_reads_again_and_stays_off_the_row_lock() -> None:
    service, store, _ = make_service()
    order = (await service.create("a", 1)).order
    seen = _interloping_writer(store, str(order.id), races=1)
    updated = await service.update(str(order.id), status="confirmed")
    assert seen == {"races": 1, "locked": 0}
    # applied on top of the interloper's change (quantity 8, version 2), not over it
    assert (updated.status, updated.quantity, updated.version) == (OrderStatus.CONFIRMED, 8, 3)
    assert [e.order.version for e in store.outbox if e.type is EventType.UPDATED] == [2, 3]


async def test_a_change_that_keeps_losing_races_takes_the_row_lock_and_still_applies() -> None:
    service, store, _ = make_service()
    order = (await service.create("a", 1)).order
    seen = _interloping_writer(store, str(order.id), races=5)
    updated = await service.update(str(order.id), status="confirmed")
    assert seen == {"races": 2, "locked": 1}  # two optimistic tries, then the lock
    assert (updated.status, updated.quantity, updated.version) == (OrderStatus.CONFIRMED, 9, 4)
    assert [e.order.version for e in store.outbox if e.type is EventType.UPDATED] == [2, 3, 4]


async def test_a_version_demanded_by_the_caller_is_checked_again_after_a_lost_race() -> None:
    service, store, _ = make_service()
    order = (await service.create("a", 1)).order
    _interloping_writer(store, str(order.id), races=1)
    with pytest.raises(VersionMismatch):
        await service.update(str(order.id), quantity=3, expected_version=1)
