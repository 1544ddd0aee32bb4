"""The publish script against real Redis: the stream is capped, but never below what the group needs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from service.events.redis_publisher import RedisStreamPublisher
from service.events.stream import StreamNames
from service.ports import OutboxRecord

if TYPE_CHECKING:
    pass

MAXLEN = 50
GROUP = "order-processors"


@pytest.fixture
async def names(redis_client: aioredis.Redis) -> AsyncIterator[StreamNames]:
    names = StreamNames(f"trim-test-{uuid.uuid4().hex[:8]}", GROUP)
    try:
        yield names
    finally:
        await redis_client.delete(names.stream)


def records(start: int, count: int) -> list[OutboxRecord]:
    return [
        OutboxRecord(
            id=n,
            event_id=str(uuid.uuid4()),
            event_type="order.created",
            order_id=str(uuid.uuid4()),
            payload=f'{{"n":{n}}}',
            request_id=f"rid-{n}",
            traceparent=None,
            occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        for n in range(start, start + count)
    ]


async def numbers(redis_client: aioredis.Redis, stream: str) -> list[int]:
    entries = await redis_client.xrange(stream)
    return [int(fields[b"request_id"].split(b"-")[1]) for _, fields in entries]


async def test_a_backlog_larger_than_maxlen_is_kept_while_the_group_has_not_read_it(
    redis_client: aioredis.Redis, names: StreamNames
) -> None:
    await redis_client.xgroup_create(names.stream, GROUP, id="0", mkstream=True)
    publisher = RedisStreamPublisher(redis_client, names, maxlen=MAXLEN)
    for start in range(0, 4 * MAXLEN, 20):  # the consumer is stopped: nothing is read
        await publisher.publish(records(start, 20))
    assert await numbers(redis_client, names.stream) == list(range(4 * MAXLEN))


async def test_delivered_but_unacknowledged_entries_are_kept_and_acknowledged_ones_trimmed(
    redis_client: aioredis.Redis, names: StreamNames
) -> None:
    await redis_client.xgroup_create(names.stream, GROUP, id="0", mkstream=True)
    publisher = RedisStreamPublisher(redis_client, names, maxlen=MAXLEN)
    await publisher.publish(records(0, 3 * MAXLEN))
    read = await redis_client.xreadgroup(GROUP, "c1", {names.stream: ">"}, count=2 * MAXLEN)
    delivered = [entry_id for entry_id, _ in read[0][1]]
    await redis_client.xack(names.stream, GROUP, *delivered[10:])  # 0..9 stay pending (a slow consumer)
    await publisher.publish(records(3 * MAXLEN, 1))
    assert await numbers(redis_client, names.stream) == list(range(3 * MAXLEN + 1))  # pending 0 blocks it

    await redis_client.xack(names.stream, GROUP, *delivered[:10])
    await publisher.publish(records(3 * MAXLEN + 1, 1))
    # Everything read and acknowledged may go, but the 51 entries never read stay: 100..151.
    assert await numbers(redis_client, names.stream) == list(range(2 * MAXLEN, 3 * MAXLEN + 2))


async def test_once_the_group_has_caught_up_the_stream_is_cut_back_to_maxlen(
    redis_client: aioredis.Redis, names: StreamNames
) -> None:
    await redis_client.xgroup_create(names.stream, GROUP, id="0", mkstream=True)
    publisher = RedisStreamPublisher(redis_client, names, maxlen=MAXLEN)
    await publisher.publish(records(0, 3 * MAXLEN))
    read = await redis_client.xreadgroup(GROUP, "c1", {names.stream: ">"})
    await redis_client.xack(names.stream, GROUP, *[entry_id for entry_id, _ in read[0][1]])
    await publisher.publish(records(3 * MAXLEN, 5))
    assert await numbers(redis_client, names.stream) == list(range(3 * MAXLEN + 5 - MAXLEN, 3 * MAXLEN + 5))


async def test_without_the_group_the_stream_is_capped_at_maxlen(
    redis_client: aioredis.Redis, names: StreamNames
) -> None:
    publisher = RedisStreamPublisher(redis_client, names, maxlen=MAXLEN)
    await publisher.publish(records(0, 2 * MAXLEN))
    assert await numbers(redis_client, names.stream) == list(range(MAXLEN, 2 * MAXLEN))
