"""Redis down while orders are watched: the streams pause, then continue with nothing skipped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import httpx
import pytest

from service.grpc.pb import orders_pb2_grpc
from tests.e2e.conftest import ServiceProcess
from tests.faults.conftest import PrivatePostgres, PrivateRedis
from tests.watching import SseReader, grpc_watch, read_changes, sse_watch, stream_ids

pytestmark = pytest.mark.e2e

OUTAGE_SECONDS = 5.0


def test_watchers_resume_after_a_redis_outage_with_every_change_in_order(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    run_service: Callable[..., ServiceProcess],
) -> None:
    proc = run_service(private_postgres.url, private_redis.url, WATCH_HEARTBEAT="1")

    async def scenario() -> None:
        async with (
            httpx.AsyncClient(base_url=proc.base_url, timeout=15) as client,
            grpc.aio.insecure_channel(proc.grpc_target) as channel,
        ):
            created = await client.post("/orders", json={"product": "before", "quantity": 1})
            assert created.status_code == 201
            call = grpc_watch(orders_pb2_grpc.OrderServiceStub(channel), after="0-0")
            async with sse_watch(client, "?after=0-0") as response:
                events = SseReader(response.aiter_lines())
                first = await events.next()
                assert first is not None
                assert (await read_changes(call, 1))[0].cursor == first.id
                private_redis.stop()
                down_at = time.monotonic()
                during = []
                while time.monotonic() - down_at < OUTAGE_SECONDS:  # REST takes writes throughout
                    reply = await client.post("/orders", json={"product": "during", "quantity": 1})
                    assert reply.status_code == 201
                    during.append(reply.json()["id"])
                    await asyncio.sleep(0.2)
                private_redis.start()
                after = await client.post("/orders", json={"product": "after", "quantity": 1})
                assert after.status_code == 201
                # before + during + after, each created and confirmed: all of them, stream order.
                total = 2 * (1 + len(during) + 1)
                sse_ids = [first.id]
                while len(sse_ids) < total:
                    event = await events.next(timeout=60)
                    assert event is not None
                    sse_ids.append(event.id)
            grpc_ids = [first.id] + [c.cursor for c in await read_changes(call, total - 1, timeout=60)]
            call.cancel()
            expected = await stream_ids(private_redis.url, proc.stream, "0-0")
            assert sse_ids == expected[:total]
            assert grpc_ids == expected[:total]
            assert len(set(expected)) == total

    asyncio.run(scenario())
