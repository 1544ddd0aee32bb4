"""A watcher resuming while the change feed's hub is behind the stream gets each change once.

The hub's XREAD reply can still be on its way when a resuming watcher's own XRANGE has already
read the same entries: the watcher then joins the hub at a position older than its own, and the
hub pushes it those entries again. HeldXread makes that timing deterministic: the real Redis
client, except that the hub's XREAD replies wait until the test lets them through.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from service.events.watch import RedisChangeFeed
from service.ports import WatchSpec

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
