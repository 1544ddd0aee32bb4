"""The relay's EventPublisher on Redis Streams: each batch XADDed in one pipelined round trip."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.events.stream import entry_fields
from service.observability.tracing import NO_TRACER, Tracer
from service.ports import OutboxRecord, PublishFailed

MAX_LINKS = 128  # the OpenTelemetry SDK's default span link limit


class RedisStreamPublisher:
    def __init__(self, redis: aioredis.Redis, stream: str, *, maxlen: int, tracer: Tracer = NO_TRACER) -> None:
        self._redis = redis
        self._stream = stream
        self._maxlen = maxlen
        self._tracer = tracer

    @property
    def system(self) -> str:
        return "Redis"

    @property
    def destination(self) -> str:
        return self._stream

    async def publish(self, records: Sequence[OutboxRecord]) -> None:
        """XADD every record in one round trip, in order (one connection, pipelined).

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
        async with self._redis.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.xadd(
                    self._stream,
                    entry_fields(record),  # type: ignore[arg-type]
                    maxlen=self._maxlen,
                    approximate=True,
                )
            await pipe.execute()
