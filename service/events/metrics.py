"""`GET /metrics/events`: outbox backlog, stream length, group pending and lag, DLQ length.

Two round trips: one indexed PostgreSQL statement and one Redis pipeline. A side that cannot be
reached reports nulls and `"error": "unavailable"` instead of failing the whole answer; why it
failed goes to the log only (exception text names internal hosts).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.events.stream import StreamNames
from service.ports import EventsFigures, Outbox, OutboxFigures, StreamFigures

log = logging.getLogger(__name__)

UNAVAILABLE = "unavailable"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class EventsMetrics:
    def __init__(self, outbox: Outbox, redis: aioredis.Redis, names: StreamNames) -> None:
        self._outbox = outbox
        self._redis = redis
        self._names = names

    async def figures(self) -> EventsFigures:
        outbox = OutboxFigures()
        try:
            backlog = await self._outbox.backlog()
            outbox.backlog = backlog.unpublished
            outbox.oldest_unpublished_age_seconds = backlog.oldest_age_seconds
        except Exception as exc:
            log.warning("events figures: PostgreSQL unavailable", extra={"error": repr(exc)})
            outbox.error = UNAVAILABLE
        stream = StreamFigures(name=self._names.stream, group=self._names.group, dlq=self._names.dlq)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xlen(self._names.stream)
                pipe.xinfo_groups(self._names.stream)
                pipe.xlen(self._names.dlq)
                length, groups, dlq_length = await pipe.execute(raise_on_error=False)
            if not isinstance(length, Exception):
                stream.length = int(length)
            if not isinstance(dlq_length, Exception):
                stream.dlq_length = int(dlq_length)
            if not isinstance(groups, Exception):
                for group in groups:
                    if _text(group.get("name")) == self._names.group:
                        stream.consumers = int(group.get("consumers") or 0)
                        stream.pending = int(group.get("pending") or 0)
                        lag = group.get("lag")
                        stream.lag = None if lag is None else int(lag)
        except (RedisError, OSError) as exc:
            log.warning("events figures: Redis unavailable", extra={"error": repr(exc)})
            stream.error = UNAVAILABLE
        return EventsFigures(outbox=outbox, stream=stream)

    async def json(self) -> bytes:
        return msgspec.json.encode(await self.figures())

    async def prometheus(self) -> bytes:
        """The same figures as Prometheus gauges; a side that cannot be reached is left out."""
        figures = await self.figures()
        lines: list[str] = []

        def gauge(name: str, help_text: str, value: float | None, labels: str = "") -> None:
            if value is None:
                return
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name}{labels} {value}")

        stream_label = f'{{stream="{figures.stream.name}"}}'
        group_label = f'{{stream="{figures.stream.name}",group="{figures.stream.group}"}}'
        dlq_label = f'{{stream="{figures.stream.dlq}"}}'
        gauge("orders_outbox_backlog", "Outbox rows not yet published", figures.outbox.backlog)
        gauge(
            "orders_outbox_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished outbox row",
            figures.outbox.oldest_unpublished_age_seconds,
        )
        gauge("orders_stream_length", "Entries in the events stream", figures.stream.length, stream_label)
        gauge("orders_stream_consumers", "Consumers in the group", figures.stream.consumers, group_label)
        gauge("orders_stream_pending", "Entries delivered but not acknowledged", figures.stream.pending, group_label)
        gauge("orders_stream_lag", "Entries not yet delivered to the group", figures.stream.lag, group_label)
        gauge("orders_stream_dlq_length", "Entries in the dead-letter stream", figures.stream.dlq_length, dlq_label)
        return ("\n".join(lines) + "\n").encode() if lines else b""
