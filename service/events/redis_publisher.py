"""The relay's EventPublisher on Redis Streams: each batch added (and the stream trimmed) by one script."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.events.stream import StreamNames, packed_entries
from service.events.stream_script import PUBLISH_AND_TRIM
from service.observability.tracing import NO_TRACER, Tracer
from service.ports import OutboxRecord, PublishFailed

MAX_LINKS = 128  # the OpenTelemetry SDK's default span link limit


class RedisStreamPublisher:
    def __init__(self, redis: aioredis.Redis, names: StreamNames, *, maxlen: int, tracer: Tracer = NO_TRACER) -> None:
        self._redis = redis
        self._stream = names.stream
        self._group = names.group
        self._maxlen = maxlen
        self._tracer = tracer
        self._script = redis.register_script(PUBLISH_AND_TRIM)

    @property
    def system(self) -> str:
        return "Redis"

    @property
    def destination(self) -> str:
        return self._stream

    async def publish(self, records: Sequence[OutboxRecord]) -> None:
        """XADD every record in one round trip, in order, then trim (service/events/stream_script.py).

        Traced as one PRODUCER span per batch: a root of its own (a batch mixes many requests'
        traces), linked to the span of each event it publishes (the first MAX_LINKS)."""
        try:
            if not self._tracer.enabled:
                return await self._xadd(records)
            with self._tracer.span(
                f"{self._stream} publish",
                "producer",
                links=[record.traceparent for record in records[:MAX_LINKS] if record.traceparent],
                attributes={
                    "messaging.system": "redis",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": self._stream,
                    "messaging.batch.message_count": len(records),
                },
            ):
                await self._xadd(records)
        except (RedisError, OSError) as exc:
            raise PublishFailed(f"XADD to {self._stream} failed: {exc!r}") from exc

    async def _xadd(self, records: Sequence[OutboxRecord]) -> None:
        await self._script(keys=[self._stream], args=[self._maxlen, self._group, packed_entries(records)])
