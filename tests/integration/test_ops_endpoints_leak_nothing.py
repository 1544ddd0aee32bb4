"""`/metrics/events` names no host, address or exception when a side is down: that goes to the log."""

from __future__ import annotations

import logging

import msgspec
import pytest
import redis.asyncio as aioredis

from service.events.metrics import EventsMetrics
from service.events.stream import StreamNames
from service.ports import OutboxBacklog
from service.store.memory_outbox import MemoryOutbox

pytestmark = pytest.mark.integration


class DownOutbox(MemoryOutbox):
    async def backlog(self) -> OutboxBacklog:
        raise ConnectionError("could not connect to db-primary.internal:5432 as orders_rw")


async def test_events_figures_carry_no_exception_text(caplog: pytest.LogCaptureFixture) -> None:
    unreachable = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        metrics = EventsMetrics(DownOutbox(), unreachable, StreamNames(stream="orders", group="g"))
        with caplog.at_level(logging.WARNING, logger="service.events.metrics"):
            body = await metrics.json()
    finally:
        await unreachable.aclose()
    figures = msgspec.json.decode(body)
    assert figures["outbox"]["error"] == "unavailable" and figures["stream"]["error"] == "unavailable"
    assert b"internal" not in body and b"127.0.0.1" not in body and b"Error" not in body
    assert any("db-primary.internal" in getattr(r, "error", "") for r in caplog.records)  # logged instead
