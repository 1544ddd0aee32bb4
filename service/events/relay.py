"""The outbox relay: publishes unpublished outbox rows to the events stream, in outbox order.

Exactly one relay is active per outbox table (a session-level PostgreSQL advisory lock held by a
dedicated session); the others stand by and retry the lock every second, so one takes over
within about a second of the holder's death. Each round: read up to `batch_size` unpublished rows
in id order, XADD them in one pipelined round trip, then mark them published. A crash between the
XADD and the mark publishes those rows again (at-least-once), never loses them.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.domain import StoreUnavailable
from service.events.stream import FailureStreak, entry_fields, sleep_unless
from service.observability.tracing import NO_TRACER, Tracer
from service.store.postgres import OutboxRecord, PostgresOutbox, RelaySession

log = logging.getLogger(__name__)

LOCK_RETRY_SECONDS = 1.0
MAX_LINKS = 128  # the OpenTelemetry SDK's default span link limit


class Relay:
    def __init__(
        self,
        outbox: PostgresOutbox,
        redis: aioredis.Redis,
        stream: str,
        *,
        maxlen: int,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        tracer: Tracer = NO_TRACER,
    ) -> None:
        self._tracer = tracer
        self._outbox = outbox
        self._redis = redis
        self._stream = stream
        self._maxlen = maxlen
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._postgres = FailureStreak("PostgreSQL (relay)")
        self._redis_streak = FailureStreak("Redis (relay)")
        self.published_total = 0
        self.active = False

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set; the batch in hand is published and marked before returning."""
        while not stop.is_set():
            try:
                async with self._outbox.relay_session() as session:
                    if not await self._become_active(session, stop):
                        return
                    self._postgres.succeeded()
                    wake = asyncio.Event()
                    try:
                        await session.listen(wake.set)
                    except StoreUnavailable as exc:  # polling alone still works
                        log.warning("relay cannot LISTEN; polling only", extra={"error": repr(exc)})
                    log.info("relay active", extra={"stream": self._stream})
                    self.active = True
                    await self._pump(session, wake, stop)
            except (StoreUnavailable, OSError) as exc:
                await sleep_unless(stop, self._postgres.failed(exc))
            except Exception as exc:  # unexpected: keep the worker alive, but say so loudly
                log.exception("relay failed; restarting it")
                await sleep_unless(stop, self._postgres.failed(exc))
            finally:
                if self.active:
                    log.info("relay inactive", extra={"published_total": self.published_total})
                self.active = False

    async def _become_active(self, session: RelaySession, stop: asyncio.Event) -> bool:
        standby_logged = False
        while not stop.is_set():
            if await session.try_lock():
                return True
            self._postgres.succeeded()
            if not standby_logged:
                log.info("relay standing by: another relay is active")
                standby_logged = True
            await sleep_unless(stop, LOCK_RETRY_SECONDS)
        return False

    async def _pump(self, session: RelaySession, wake: asyncio.Event, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wake.clear()  # before the read: a notification during it means "read again"
            records = await session.claim_batch(self._batch_size)
            if records:
                try:
                    await self._publish(records)
                except (RedisError, OSError) as exc:
                    await sleep_unless(stop, self._redis_streak.failed(exc))
                    continue
                self._redis_streak.succeeded()
                await session.mark_published([record.id for record in records])
                self.published_total += len(records)
                if len(records) == self._batch_size:
                    continue
            await sleep_unless(stop, self._poll_interval, wake)

    async def _publish(self, records: list[OutboxRecord]) -> None:
        """XADD every record in one round trip, in order (one connection, pipelined).

        Traced as one PRODUCER span per batch: a root of its own (a batch mixes many requests'
        traces), linked to the span of each event it publishes (the first MAX_LINKS)."""
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

    async def _xadd(self, records: list[OutboxRecord]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.xadd(
                    self._stream,
                    entry_fields(record),  # type: ignore[arg-type]
                    maxlen=self._maxlen,
                    approximate=True,
                )
            await pipe.execute()
