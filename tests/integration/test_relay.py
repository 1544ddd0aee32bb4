"""The outbox relay against real PostgreSQL and Redis: order, fields, marks, wake-up, one active relay."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
import redis.asyncio as aioredis

from service.access import RequestContext
from service.events.redis_publisher import RedisStreamPublisher
from service.events.relay import Relay
from service.events.stream import StreamNames
from service.orders import OrderService
from service.store.database import Database
from service.store.postgres import PostgresOutbox
from tests.conftest import IsolatedSchema

if TYPE_CHECKING:
    pass


GROUP = "order-processors"


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def make_relay(
    database: Database,
    schema: IsolatedSchema,
    redis_client: aioredis.Redis,
    stream: str,
    retention: float = 0.0,
    **kw: object,
) -> Relay:
    publisher = RedisStreamPublisher(redis_client, StreamNames(stream, GROUP), maxlen=100_000)
    return Relay(PostgresOutbox(database, schema.dsn, retention=retention), publisher, **kw)  # type: ignore[arg-type]


async def test_publishes_in_outbox_order_with_fields_and_marks(
    pg_service: OrderService, database: Database, schema: IsolatedSchema, redis_client: aioredis.Redis, stream: str
) -> None:
    created = [
        (
            await pg_service.create(
                f"p{i}", i + 1, ctx=RequestContext(request_id=f"rid-{i}", traceparent="00-ab-cd-01")
            )
        ).order
        for i in range(3)
    ]
    await pg_service.update(str(created[0].id), quantity=9)
    await pg_service.delete(str(created[1].id))
    written = await database.fetch("SELECT event_id FROM outbox ORDER BY id")
    relay = make_relay(database, schema, redis_client, stream, batch_size=2)  # several rounds
    await _run_until_published(relay, redis_client, stream, 5)
    entries = await redis_client.xrange(stream)
    assert [e[1][b"event_id"].decode() for e in entries] == [str(row[0]) for row in written]
    assert await database.fetch("SELECT id FROM outbox") == []  # OUTBOX_RETENTION=0: deleted once published
    assert [e[1][b"event"] for e in entries] == [
        b"order.created",
        b"order.created",
        b"order.created",
        b"order.updated",
        b"order.deleted",
    ]
    first = entries[0][1]
    assert first[b"request_id"] == b"rid-0"
    assert first[b"traceparent"] == b"00-ab-cd-01"
    assert first[b"occurred_at"].endswith(b"Z")
    payload = msgspec.json.decode(first[b"payload"])
    assert payload["id"] == str(created[0].id)
    assert payload["status"] == "pending"
    assert relay.published_total == 5


async def _length_is(client: aioredis.Redis, stream: str, n: int) -> bool:
    return int(await client.xlen(stream)) >= n


async def _run_until_published(relay: Relay, client: aioredis.Redis, stream: str, n: int) -> None:
    """Run the relay until the stream holds `n` entries, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await wait_for(lambda: _length_is(client, stream, n))
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_notification_wakes_the_relay_without_polling(
    pg_service: OrderService, database: Database, schema: IsolatedSchema, redis_client: aioredis.Redis, stream: str
) -> None:
    relay = make_relay(database, schema, redis_client, stream, poll_interval=60.0)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:

        async def active() -> bool:
            return relay.active

        await wait_for(active)
        await asyncio.sleep(0.3)  # the first (empty) round is done; the relay now sleeps for 60 s
        await pg_service.create("woken", 1)
        await wait_for(lambda: _length_is(redis_client, stream, 1), timeout=5.0)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_only_one_relay_is_active_and_a_standby_takes_over(
    pg_service: OrderService, database: Database, schema: IsolatedSchema, redis_client: aioredis.Redis, stream: str
) -> None:
    # Published rows are kept (a retention) so the stream can be compared with the table afterwards.
    relays = [make_relay(database, schema, redis_client, stream, retention=3600, batch_size=50) for _ in range(3)]
    stops = [asyncio.Event() for _ in relays]
    tasks = [asyncio.create_task(r.run(s)) for r, s in zip(relays, stops, strict=True)]
    try:
        for i in range(0, 300, 30):
            await asyncio.gather(*(pg_service.create(f"p{j}", 1) for j in range(i, i + 30)))
        await wait_for(lambda: _length_is(redis_client, stream, 300))
        assert sum(r.active for r in relays) == 1
        active = next(i for i, r in enumerate(relays) if r.active)
        stops[active].set()
        await asyncio.wait_for(tasks[active], 5)
        for j in range(100):
            await pg_service.create(f"later{j}", 1)
        await wait_for(lambda: _length_is(redis_client, stream, 400))
        assert sum(r.active for r in relays) == 1
    finally:
        for s in stops:
            s.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    entries = await redis_client.xrange(stream)
    outbox = await database.fetch("SELECT event_id FROM outbox ORDER BY id")
    # exactly once each, in outbox order, across the hand-over
    assert [e[1][b"event_id"].decode() for e in entries] == [str(row[0]) for row in outbox]


async def test_with_a_retention_published_rows_are_kept_marked_then_purged_in_batches(
    pg_service: OrderService, database: Database, schema: IsolatedSchema, redis_client: aioredis.Redis, stream: str
) -> None:
    for i in range(5):
        await pg_service.create(f"r{i}", 1)
    relay = make_relay(database, schema, redis_client, stream, retention=0.5)
    await _run_until_published(relay, redis_client, stream, 5)
    rows = await database.fetch("SELECT published_at FROM outbox")
    assert len(rows) == 5 and all(row[0] is not None for row in rows)
    outbox = PostgresOutbox(database, schema.dsn, retention=0.5)
    assert await outbox.purge_published(100) == 0  # not yet past the retention
    assert (await outbox.backlog()).unpublished == 0
    await asyncio.sleep(0.6)
    assert await outbox.purge_published(3) == 3
    assert await outbox.purge_published(3) == 2
    assert await database.fetch("SELECT id FROM outbox") == []


async def test_the_backlog_is_the_span_of_unpublished_ids_and_the_oldest_ones_age(
    pg_service: OrderService, database: Database, schema: IsolatedSchema
) -> None:
    outbox = PostgresOutbox(database, schema.dsn)
    empty = await outbox.backlog()
    assert (empty.unpublished, empty.oldest_age_seconds) == (0, None)
    for i in range(4):
        await pg_service.create(f"b{i}", 1)
    backlog = await outbox.backlog()
    assert backlog.unpublished == 4
    assert backlog.oldest_age_seconds is not None and 0 <= backlog.oldest_age_seconds < 60
