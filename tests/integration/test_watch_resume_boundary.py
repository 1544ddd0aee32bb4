"""The change feed's hub behind the stream: a resuming watcher gets each change once, and changes
trimmed away before the hub read them end its watchers as expired, never a silent gap.

The hub's XREAD reply can still be on its way when a resuming watcher's own XRANGE has already
read the same entries: the watcher then joins the hub at a position older than its own, and the
hub pushes it those entries again. HeldXread makes that timing deterministic: the real Redis
client, except that the hub's XREAD replies wait until the test lets them through. GatedXread
holds the hub's next XREAD before it is sent, or fails it as an outage would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from service.domain import CursorExpired
from service.events.watch import READ_COUNT, RedisChangeFeed
from service.ports import ChangeSubscription, WatchSpec

pytestmark = pytest.mark.integration

EVERYTHING = WatchSpec(order_ids=None, visible=None)


class HeldXread:
    """`client` with XREAD replies held until `release` is set."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self.release = asyncio.Event()
        self.release.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def xread(self, *args: Any, **kwargs: Any) -> Any:
        reply = await self._client.xread(*args, **kwargs)
        await self.release.wait()
        return reply


def change(number: int) -> dict[str, str]:
    order = (
        f'{{"id":"{uuid.uuid4()}","product":"p{number}","quantity":1,"status":"pending","version":1,'
        '"created_at":"2026-12-04T19:00:00.000001Z","updated_at":"2026-12-04T19:00:00.000001Z"}'
    )
    return {
        "event": "order.created",
        "payload": order,
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2026-12-04T19:00:00.000001Z",
    }


async def test_a_resume_while_the_hub_lags_gets_each_change_once(redis_client: aioredis.Redis, stream: str) -> None:
    first = (await redis_client.xadd(stream, change(1))).decode()
    held = HeldXread(redis_client)
    feed = RedisChangeFeed(cast(aioredis.Redis, held), stream)
    live = await feed.subscribe(None, EVERYTHING)  # the hub now reads from `first`
    try:
        held.release.clear()
        second = (await redis_client.xadd(stream, change(2))).decode()
        await asyncio.sleep(0.2)  # the hub's XREAD has `second`, held on its way
        resumer = await feed.subscribe(first, EVERYTHING)
        held.release.set()
        received: list[str] = []
        for _ in range(3):
            received += [entry.cursor for entry in await resumer.changes(0.3)]
        assert [entry.cursor for entry in await live.changes(0.3)] == [second]
        assert received == [second]
        resumer.close()
    finally:
        live.close()
        feed.close()
        await asyncio.sleep(0.05)  # the hub's task ends


class GatedXread:
    """`client` whose XREADs wait at a gate before they are sent, or fail while `down` is set."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self.gate = asyncio.Event()
        self.gate.set()
        self.down = False
        self.waiting = asyncio.Event()  # an XREAD waits at the closed gate
        self.failed = asyncio.Event()  # an XREAD failed while down

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def xread(self, *args: Any, **kwargs: Any) -> Any:
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        if self.down:
            self.failed.set()
            raise RedisConnectionError("the test's outage")
        return await self._client.xread(*args, **kwargs)

    async def hold(self) -> None:
        """Close the gate; returns once the hub's next XREAD waits there (the one in flight, if
        any, returned first: its BLOCK is 1 s)."""
        self.waiting.clear()
        self.gate.clear()
        await asyncio.wait_for(self.waiting.wait(), 10)


async def add(redis_client: aioredis.Redis, stream: str, count: int) -> list[str]:
    async with redis_client.pipeline(transaction=False) as pipe:
        for number in range(count):
            pipe.xadd(stream, change(number))
        return [raw.decode() for raw in await pipe.execute()]


async def drain(subscription: ChangeSubscription, count: int) -> list[str]:
    """The cursors of the next `count` changes (generous bounds: this is no timing test)."""
    received: list[str] = []
    for _ in range(100):
        if len(received) >= count:
            break
        received += [entry.cursor for entry in await subscription.changes(0.2)]
    return received


@asynccontextmanager
async def watching(
    redis_client: aioredis.Redis, stream: str
) -> AsyncIterator[tuple[RedisChangeFeed, GatedXread, ChangeSubscription]]:
    """A feed over `stream` (one entry in it) with one live watcher of everything; both closed after."""
    await redis_client.xadd(stream, change(0))
    gated = GatedXread(redis_client)
    feed = RedisChangeFeed(cast(aioredis.Redis, gated), stream, buffer=10 * READ_COUNT)
    live = await feed.subscribe(None, EVERYTHING)
    try:
        yield feed, gated, live
    finally:
        live.close()
        feed.close()
        await asyncio.sleep(0.05)  # the hub's task ends


async def test_changes_trimmed_during_an_outage_end_the_watchers_as_expired(
    redis_client: aioredis.Redis, stream: str
) -> None:
    async with watching(redis_client, stream) as (feed, gated, live):
        before = await add(redis_client, stream, 2)
        assert await drain(live, 2) == before  # the hub is past them
        buffered = await add(redis_client, stream, 1)  # read by the hub, not yet taken by the watcher
        await gated.hold()
        gated.down = True
        gated.gate.set()
        await asyncio.wait_for(gated.failed.wait(), 10)
        await add(redis_client, stream, 5)
        await redis_client.xtrim(stream, maxlen=2, approximate=False)  # three of the five unread ones go
        gated.down = False
        assert await drain(live, 1) == buffered  # what it had, then the gap is said
        with pytest.raises(CursorExpired, match=f"cursor {buffered[0]} is older than the oldest change"):
            await live.changes(5.0)
        assert live.ending
        fresh = await feed.subscribe(None, EVERYTHING)  # from now on the feed serves as before
        after = await add(redis_client, stream, 1)
        assert await drain(fresh, 1) == after
        fresh.close()


async def test_an_outage_without_trimming_skips_nothing_and_expires_nothing(
    redis_client: aioredis.Redis, stream: str
) -> None:
    async with watching(redis_client, stream) as (_feed, gated, live):
        await redis_client.xtrim(stream, maxlen=1, approximate=False)  # trimmed up to the hub's position
        await gated.hold()
        gated.down = True
        gated.gate.set()
        await asyncio.wait_for(gated.failed.wait(), 10)
        during = await add(redis_client, stream, 5)
        gated.down = False
        assert await drain(live, 5) == during
        assert not live.ending


async def test_changes_trimmed_while_the_hub_lags_end_the_watchers_as_expired(
    redis_client: aioredis.Redis, stream: str
) -> None:
    async with watching(redis_client, stream) as (_feed, gated, live):
        await gated.hold()
        await add(redis_client, stream, READ_COUNT + 500)
        await redis_client.xtrim(stream, maxlen=READ_COUNT, approximate=False)  # 500 unread ones go
        gated.gate.set()  # the next read is a full one, starting after the gap
        with pytest.raises(CursorExpired):
            await drain(live, 1)


async def test_a_lagging_hub_over_a_trimmed_stream_without_a_gap_delivers_everything(
    redis_client: aioredis.Redis, stream: str
) -> None:
    async with watching(redis_client, stream) as (_feed, gated, live):
        await redis_client.xtrim(stream, maxlen=1, approximate=False)  # trimmed, but only what was read
        await gated.hold()
        added = await add(redis_client, stream, READ_COUNT + 500)  # full reads, each checked
        gated.gate.set()
        assert await drain(live, len(added)) == added
        assert not live.ending
