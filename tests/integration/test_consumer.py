"""The stream consumer against real PostgreSQL and Redis: confirm, ack, takeover, retries, DLQ."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import msgspec
import pytest
import redis.asyncio as aioredis

from service.access import RequestContext
from service.domain import OrderStatus
from service.events.consumer import Consumer
from service.events.stream import StreamNames
from service.observability.logging import request_id_var
from service.orders import OrderService
from service.store.database import Database
from service.store.postgres import PostgresOrderStore

if TYPE_CHECKING:
    pass

GROUP = "order-processors"


@pytest.fixture
async def names(redis_client: aioredis.Redis) -> AsyncIterator[StreamNames]:
    found = StreamNames(stream=f"consumer-test-{uuid.uuid4().hex[:8]}", group=GROUP)
    try:
        yield found
    finally:
        await redis_client.delete(found.stream, found.dlq)


class RequestIdCapture(logging.Handler):
    """Records (message, request_id_var) of every log line, as the JSON formatter would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str | None, dict[str, object]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), request_id_var.get(), dict(record.__dict__)))


@pytest.fixture
def captured() -> Iterator[RequestIdCapture]:
    handler = RequestIdCapture()
    logger = logging.getLogger("service.events")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)  # "event handled" lines are DEBUG
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def created_fields(order_id: str, request_id: str = "") -> dict[str, str]:
    payload = {"id": order_id, "product": "p", "quantity": 1, "status": "pending", "version": 1}
    return {
        "event": "order.created",
        "payload": msgspec.json.encode(payload).decode(),
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2025-01-01T00:00:00Z",
        "request_id": request_id,
    }


class Running:
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(consumer.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5)


@pytest.fixture
async def start(
    pg_service: OrderService, redis_client: aioredis.Redis, names: StreamNames
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    running: list[Running] = []

    async def factory(**kw: object) -> Running:
        options: dict[str, object] = {"claim_idle_ms": 30_000, "max_deliveries": 5, "retry_backoff_ms": 100}
        options.update(kw)
        consumer = Consumer(pg_service, redis_client, names, **options)  # type: ignore[arg-type]
        await consumer.ensure_group()
        running.append(Running(consumer))
        return running[-1]

    yield factory
    for item in running:
        await item.close()


async def _pending(client: aioredis.Redis, names: StreamNames) -> int:
    info = await client.xpending(names.stream, names.group)
    return int(info["pending"])


async def test_created_order_is_confirmed_acked_and_logged_with_request_id(
    pg_service: OrderService,
    redis_client: aioredis.Redis,
    names: StreamNames,
    start: Callable[..., Awaitable[Running]],
    captured: RequestIdCapture,
    database: Database,
) -> None:
    order = (await pg_service.create("book", 1)).order
    await start()
    await redis_client.xadd(names.stream, created_fields(str(order.id), "rid-42"))  # type: ignore[arg-type]
    await redis_client.xadd(names.stream, {"event": "order.updated", "payload": "{}", "request_id": "rid-43"})
    await redis_client.xadd(names.stream, {"event": "order.exploded", "payload": "{}", "request_id": "rid-44"})

    async def confirmed() -> bool:
        return (await pg_service.get(str(order.id))).status is OrderStatus.CONFIRMED

    await wait_for(confirmed)

    async def all_acked() -> bool:
        return (
            await _pending(redis_client, names) == 0
            and len([line for line in captured.lines if line[0] == "event handled"]) == 3
        )

    await wait_for(all_acked)
    handled = {line[1]: line[2] for line in captured.lines if line[0] == "event handled"}
    assert handled["rid-42"]["outcome"] == "confirmed"
    assert handled["rid-43"]["outcome"] == "ignored"
    assert handled["rid-44"]["outcome"] == "unknown event"
    assert any(line[0].startswith("unknown event type") and line[1] == "rid-44" for line in captured.lines)
    # the confirmation carries the request id of the entry into its own event
    rows = await database.fetch("SELECT event_type, request_id FROM outbox ORDER BY id")
    assert rows == [("order.created", None), ("order.updated", "rid-42")]


async def test_redelivered_created_event_is_harmless(
    pg_service: OrderService, redis_client: aioredis.Redis, names: StreamNames, start: Callable[..., Awaitable[Running]]
) -> None:
    order = (await pg_service.create("book", 1)).order
    running = await start()
    for _ in range(3):
        await redis_client.xadd(names.stream, created_fields(str(order.id)))  # type: ignore[arg-type]

    async def done() -> bool:
        return running.consumer.handled_total == 3 and await _pending(redis_client, names) == 0

    await wait_for(done)
    assert (await pg_service.get(str(order.id))).version == 2  # confirmed once


async def test_entries_of_a_dead_consumer_are_taken_over(
    pg_service: OrderService, redis_client: aioredis.Redis, names: StreamNames, start: Callable[..., Awaitable[Running]]
) -> None:
    order = (await pg_service.create("book", 1)).order
    await redis_client.xgroup_create(names.stream, names.group, id="0", mkstream=True)
    await redis_client.xadd(names.stream, created_fields(str(order.id)))  # type: ignore[arg-type]
    # a consumer that reads and then dies without acking
    await redis_client.xreadgroup(names.group, "ghost", {names.stream: ">"}, count=10)
    await start(claim_idle_ms=200)

    async def confirmed() -> bool:
        return (await pg_service.get(str(order.id))).status is OrderStatus.CONFIRMED

    await wait_for(confirmed)

    async def nothing_pending() -> bool:
        return await _pending(redis_client, names) == 0

    await wait_for(nothing_pending)


async def test_poison_entry_is_retried_then_dead_lettered_and_the_consumer_keeps_going(
    pg_service: OrderService, redis_client: aioredis.Redis, names: StreamNames, start: Callable[..., Awaitable[Running]]
) -> None:
    await start(claim_idle_ms=200, max_deliveries=3, retry_backoff_ms=50)
    poison = {"event": "order.created", "payload": '{"id": "not-a-uuid"}', "request_id": "bad", "event_id": "e-1"}
    poison_id = await redis_client.xadd(names.stream, poison)  # type: ignore[arg-type]
    order = (await pg_service.create("book", 1)).order
    await redis_client.xadd(names.stream, created_fields(str(order.id)))  # type: ignore[arg-type]

    async def confirmed() -> bool:
        return (await pg_service.get(str(order.id))).status is OrderStatus.CONFIRMED

    await wait_for(confirmed)

    async def dead_lettered() -> bool:
        return int(await redis_client.xlen(names.dlq)) == 1 and await _pending(redis_client, names) == 0

    await wait_for(dead_lettered)
    [(_, fields)] = await redis_client.xrange(names.dlq)
    assert fields[b"event"] == b"order.created"
    assert fields[b"payload"] == b'{"id": "not-a-uuid"}'
    assert fields[b"request_id"] == b"bad"
    assert fields[b"original_id"] == poison_id
    assert fields[b"deliveries"] == b"3"
    assert b"ValidationError" in fields[b"error"]


async def test_the_created_orders_of_one_read_are_confirmed_with_one_read_and_one_update(
    store: PostgresOrderStore,
    pg_service: OrderService,
    redis_client: aioredis.Redis,
    names: StreamNames,
    start: Callable[..., Awaitable[Running]],
    database: Database,
) -> None:
    orders = [(await pg_service.create(f"b{i}", 1, ctx=RequestContext(request_id=f"rid-{i}"))).order for i in range(50)]
    for order in orders:
        await redis_client.xadd(names.stream, created_fields(str(order.id), f"rid-{orders.index(order)}"))  # type: ignore[arg-type]
    await redis_client.xadd(names.stream, created_fields(str(orders[0].id), "rid-0"))  # redelivered in the same read
    calls: list[str] = []
    real_get_many, real_replace_many = store.get_many, store.replace_many_if_version

    async def get_many(ids: list[uuid.UUID]) -> list[object]:
        calls.append(f"get_many {len(ids)}")
        return await real_get_many(ids)  # type: ignore[return-value]

    async def replace_many(changes: list[object]) -> list[bool]:
        calls.append(f"replace_many {len(changes)}")
        return await real_replace_many(changes)  # type: ignore[arg-type]

    store.get_many = get_many  # type: ignore[method-assign, assignment]
    store.replace_many_if_version = replace_many  # type: ignore[method-assign, assignment]
    await start()

    async def all_acked() -> bool:
        return await _pending(redis_client, names) == 0 and len(calls) >= 2

    await wait_for(all_acked)
    assert calls == ["get_many 50", "replace_many 50"]
    rows = await database.fetch("SELECT status, version FROM orders")
    assert set(rows) == {("confirmed", 2)}
    confirmations = await database.fetch(
        "SELECT request_id FROM outbox WHERE event_type = 'order.updated' ORDER BY request_id"
    )
    assert sorted(row[0] for row in confirmations) == sorted(f"rid-{i}" for i in range(50))
