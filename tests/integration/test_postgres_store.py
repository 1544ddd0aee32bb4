"""The PostgreSQL adapter against a real PostgreSQL, each test in its own schema."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from service.access import RequestContext
from service.clock import SystemClock, UuidV7Source
from service.cursor import CursorCodec
from service.domain import EventType, IdempotencyKeyReused, Order, OrderEvent, OrderStatus, StoreUnavailable
from service.orders import CreateResult, OrderService
from service.store.database import Database
from service.store.migrator import load_migrations, migrate
from service.store.postgres import PostgresOrderStore
from tests.conftest import IsolatedSchema


async def test_migrations_are_recorded_once(schema: IsolatedSchema, database: Database) -> None:
    assert await migrate(schema.dsn) == []  # already applied by the fixture
    rows = await database.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [r[1] for r in rows] == [m.name for m in load_migrations()]


async def test_concurrent_migrations_do_not_race(test_services: object) -> None:
    isolated = IsolatedSchema(test_services.database_url)  # type: ignore[attr-defined]
    from benchmarks.database import admin_sql

    await admin_sql(isolated.base_dsn, f"CREATE SCHEMA {isolated.name}")
    try:
        results = await asyncio.gather(*(migrate(isolated.dsn) for _ in range(4)))
        applied = [name for result in results for name in result]
        assert sorted(applied) == sorted(m.name for m in load_migrations())
    finally:
        await isolated.drop()


async def test_create_get_round_trip_with_outbox_row(pg_service: OrderService, database: Database) -> None:
    created = (await pg_service.create("book", 3, ctx=RequestContext(request_id="r-1"))).order
    fetched = await pg_service.get(str(created.id))
    assert fetched == created
    rows = await database.fetch("SELECT event_type, order_id, payload::text, request_id FROM outbox")
    assert len(rows) == 1
    event_type, order_id, payload, request_id = rows[0]
    assert (event_type, order_id, request_id) == ("order.created", str(created.id), "r-1")
    assert msgspec.json.decode(payload)["product"] == "book"


async def test_list_pages_by_status_newest_first(pg_service: OrderService) -> None:
    orders = [(await pg_service.create(f"p{i}", 1)).order for i in range(5)]
    await pg_service.update(str(orders[1].id), status="confirmed")
    await pg_service.update(str(orders[3].id), status="confirmed")
    page = await pg_service.list(limit=1, status="confirmed")
    assert [o.id for o in page.orders] == [orders[3].id]
    assert page.next_cursor is not None
    page = await pg_service.list(limit=1, status="confirmed", cursor=page.next_cursor)
    assert [o.id for o in page.orders] == [orders[1].id]
    assert page.next_cursor is None
    everything = await pg_service.list(limit=10)
    assert [o.id for o in everything.orders] == [o.id for o in reversed(orders)]


async def test_pages_asked_in_one_loop_turn_share_a_statement_per_shape(
    store: PostgresOrderStore, pg_service: OrderService, database: Database
) -> None:
    """Pages of every shape (cursor, status, owner, each or not), some asked twice, gathered in one
    loop turn: each caller gets exactly the page it gets alone, in one batch (one statement per
    shape, identical pages read once)."""
    orders = [(await pg_service.create(f"p{i}", 1)).order for i in range(12)]
    owners = ["alice" if i % 3 else "bob" for i in range(12)]
    await database.fetch(
        "UPDATE orders o SET owner = t.owner FROM unnest($1::uuid[], $2::text[]) AS t(id, owner) WHERE o.id = t.id",
        [[order.id for order in orders], owners],
    )
    for order in orders[::4]:
        await pg_service.update(str(order.id), status="confirmed")
    middle = orders[6].id
    queries = [
        (limit, before, status, owner)
        for limit in (3, 20)
        for before in (None, middle)
        for status in (None, OrderStatus.CONFIRMED, OrderStatus.PENDING)
        for owner in (None, "alice", "bob", "carol")
    ]
    alone = [await store.list_page(*query) for query in queries]
    assert any(len(page) == 3 for page in alone) and any(page == [] for page in alone)
    batches = store._lists.batches
    together = await asyncio.gather(*(store.list_page(*query) for query in [*queries, *queries[:5]]))
    assert store._lists.batches == batches + 1
    assert together == [*alone, *alone[:5]]
    assert together[0] is not together[len(queries)]  # each caller its own list


async def test_conditional_update_never_loses_an_update(pg_service: OrderService) -> None:
    order = (await pg_service.create("counter", 1)).order
    # 20 concurrent writers each set a distinct quantity: every one commits exactly once
    results = await asyncio.gather(*(pg_service.update(str(order.id), quantity=q) for q in range(2, 22)))
    assert sorted(r.version for r in results) == list(range(2, 22))
    final = await pg_service.get(str(order.id))
    assert final.version == 21


async def test_concurrent_updates_of_different_orders_share_one_statement(
    store: PostgresOrderStore, pg_service: OrderService, database: Database
) -> None:
    orders = [(await pg_service.create(f"o{i}", 1)).order for i in range(6)]
    target = orders[0]
    batches_before = store._updates.batches
    # six orders updated at once, plus two more writers of the first one in the same loop turn
    results = await asyncio.gather(
        *(pg_service.update(str(o.id), quantity=7) for o in orders),
        pg_service.update(str(target.id), quantity=8),
        pg_service.update(str(target.id), status="confirmed"),
    )
    assert all(r.quantity == 7 and r.version == 2 for r in results[1:6])
    final = await pg_service.get(str(target.id))
    assert final.version == 4  # three writers of one order: each applied once, none lost
    assert sorted(r.version for r in (results[0], results[6], results[7])) == [2, 3, 4]
    assert final.status == OrderStatus.CONFIRMED
    assert store._updates.batches - batches_before < 8  # the first writes went together
    events = await database.fetch(
        "SELECT order_id, count(*) FROM outbox WHERE event_type = 'order.updated' GROUP BY order_id"
    )
    assert {order_id: count for order_id, count in events} == {
        str(o.id): (3 if o.id == target.id else 1) for o in orders
    }


async def test_writers_of_one_order_from_one_version_in_a_batch_cost_one_statement(
    store: PostgresOrderStore, pg_service: OrderService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    order = (await pg_service.create("one", 1)).order
    other = (await pg_service.create("two", 1)).order
    statements: list[str] = []
    real_fetch = database.fetch

    async def counted(sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        statements.append(sql)
        return await real_fetch(sql, params)

    monkeypatch.setattr(store._db, "fetch", counted)

    def change(current: Order, quantity: int, expected: int) -> tuple[Order, int, OrderEvent]:
        changed = msgspec.structs.replace(current, quantity=quantity, version=expected + 1)
        event = OrderEvent(id=uuid.uuid4(), type=EventType.UPDATED, order=changed, occurred_at=changed.updated_at)
        return changed, expected, event

    # three writers of `order` that all read version 1, one of `other`: the two that lose need no statement
    results = await store.replace_many_if_version(
        [change(order, 5, 1), change(order, 6, 1), change(other, 7, 1), change(order, 8, 1)]
    )
    assert results == [True, False, True, False]
    assert len(statements) == 1
    stored = await store.get(order.id)
    assert stored is not None and (stored[0].quantity, stored[0].version) == (5, 2)
    events = await database.fetch("SELECT count(*) FROM outbox WHERE event_type = 'order.updated'")
    assert events == [(2,)]


async def test_update_and_delete_write_events_in_the_same_statement(
    pg_service: OrderService, database: Database
) -> None:
    order = (await pg_service.create("book", 1)).order
    await pg_service.update(str(order.id), status="confirmed")
    await pg_service.delete(str(order.id))
    rows = await database.fetch("SELECT event_type, payload->>'status' FROM outbox ORDER BY id")
    assert rows == [
        ("order.created", "pending"),
        ("order.updated", "confirmed"),
        ("order.deleted", "confirmed"),
    ]


async def test_idempotency_is_enforced_in_postgres(store: PostgresOrderStore, database: Database) -> None:
    from service.clock import SystemClock, UuidV7Source
    from service.cursor import CursorCodec

    service = OrderService(store, SystemClock(), UuidV7Source(), CursorCodec(b"k"))
    results = await asyncio.gather(*(service.create("book", 2, idempotency_key="same") for _ in range(20)))
    assert len({r.order.id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert (await database.fetch("SELECT count(*) FROM orders"))[0][0] == 1
    assert (await database.fetch("SELECT count(*) FROM outbox"))[0][0] == 1
    with pytest.raises(IdempotencyKeyReused):
        await service.create("book", 5, idempotency_key="same")


async def test_expired_idempotency_keys_are_taken_over_and_purged(
    store: PostgresOrderStore, database: Database
) -> None:
    from service.clock import SystemClock, UuidV7Source
    from service.cursor import CursorCodec

    service = OrderService(
        store, SystemClock(), UuidV7Source(), CursorCodec(b"k"), idempotency_ttl=timedelta(milliseconds=200)
    )
    first = await service.create("book", 2, idempotency_key="short")
    await asyncio.sleep(0.3)
    second = await service.create("book", 2, idempotency_key="short")
    assert not second.replayed and second.order.id != first.order.id
    await service.create("pen", 1, idempotency_key="other")
    await asyncio.sleep(0.3)
    assert await service.purge_expired_idempotency_keys() == 2
    assert (await database.fetch("SELECT count(*) FROM idempotency_keys"))[0][0] == 0


async def test_unreachable_database_raises_store_unavailable() -> None:
    db = Database("postgresql://postgres@127.0.0.1:1/none", pool_size=2, acquire_timeout=1.0)
    try:
        with pytest.raises(StoreUnavailable):
            await PostgresOrderStore(db).get(__import__("uuid").uuid4())
    finally:
        db.close()


async def test_exhausted_pool_times_out_instead_of_waiting_forever(schema: IsolatedSchema) -> None:
    db = Database(schema.dsn, pool_size=2, acquire_timeout=0.2)
    try:
        async with db.connection(), db.connection():
            with pytest.raises(StoreUnavailable):
                async with db.connection():
                    pass
        assert db.stats().acquire_timeouts_total == 1
    finally:
        db.close()


async def test_status_is_stored_as_text(pg_service: OrderService, database: Database) -> None:
    order = (await pg_service.create("book", 1)).order
    await pg_service.update(str(order.id), status=OrderStatus.CANCELLED.value)
    assert (await database.fetch("SELECT status FROM orders"))[0][0] == "cancelled"


async def test_keyed_creates_of_one_loop_turn_share_a_statement_and_keep_every_rule(
    store: PostgresOrderStore, database: Database
) -> None:
    service = OrderService(store, SystemClock(), UuidV7Source(), CursorCodec(b"it"))
    first = await service.create("held", 1, idempotency_key="held-key")
    results = await asyncio.gather(
        *(service.create(f"k{i}", 1, idempotency_key=f"key-{i}") for i in range(20)),
        service.create("k0", 1, idempotency_key="key-0"),  # the same key twice in one batch
        service.create("held", 1, idempotency_key="held-key"),  # a live key from before: replayed
        service.create("other", 2, idempotency_key="held-key"),  # ... and reused with another body
        return_exceptions=True,
    )
    created, repeated, replayed, reused = results[:20], results[20], results[21], results[22]
    assert all(isinstance(r, CreateResult) and not r.replayed for r in created)
    assert isinstance(repeated, CreateResult) and repeated.replayed
    assert repeated.order.id == created[0].order.id  # type: ignore[union-attr]
    assert isinstance(replayed, CreateResult) and replayed.replayed and replayed.order.id == first.order.id
    assert isinstance(reused, IdempotencyKeyReused)
    counts = await database.fetch(
        "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM outbox), (SELECT count(*) FROM idempotency_keys)"
    )
    assert counts == [(21, 21, 21)]


async def test_batched_updates_sharing_orders_wait_for_each_other_and_never_deadlock(
    pg_service: OrderService, schema: IsolatedSchema
) -> None:
    """Two processes' batches (two stores, two pools) updating the same orders in opposite orders."""
    orders = [(await pg_service.create(f"d{i}", 1)).order for i in range(200)]
    stores = [PostgresOrderStore(Database(schema.dsn, pool_size=4, acquire_timeout=10.0)) for _ in range(2)]

    async def rounds(store: PostgresOrderStore, reverse: bool) -> int:
        stored = 0
        for _ in range(20):
            found = await store.get_many([order.id for order in orders])
            current = [entry[0] for entry in found if entry is not None]
            if reverse:
                current.reverse()
            changes = [
                (msgspec.structs.replace(order, quantity=order.quantity % 9 + 1, version=order.version + 1),
                 order.version,
                 OrderEvent(id=uuid.uuid4(), type=EventType.UPDATED, order=order, occurred_at=order.updated_at))
                for order in current
            ]  # fmt: skip
            stored += sum(await store.replace_many_if_version(changes))
        return stored

    try:
        runs = [rounds(stores[n % 2], reverse=n % 2 == 1) for n in range(6)]
        done = await asyncio.wait_for(asyncio.gather(*runs), 120)
    finally:
        for store in stores:
            store._db.close()
    assert sum(done) > 0  # some won, some lost races: none failed
