"""The stream consumer: confirms created orders; retries, takes over and dead-letters entries.

Consumer group `order-processors` (created with MKSTREAM from the start of the stream, so nothing
published before the group existed is skipped). Each process is one consumer (hostname-pid).

- New entries: XREADGROUP `>`. The order.created entries of one read are confirmed together
  (`OrderService.confirm_many`: one read and one conditional update for the batch); order.updated
  and order.deleted (the confirmations' own events among them) need nothing and are acknowledged at
  once; the rest (and every entry when tracing is on, so each keeps its span) go one by one,
  entries of different orders concurrently, those of one order in stream order. One XACK per read.
- A failed entry stays pending (not acked) and is retried by this consumer after a backoff
  (RETRY_BACKOFF_MS doubled per delivery, at most CLAIM_IDLE_MS) via XCLAIM.
- Entries pending longer than CLAIM_IDLE_MS in any consumer (one that died) are taken over
  with XAUTOCLAIM.
- An entry whose delivery count exceeds MAX_DELIVERIES, or that fails on its MAX_DELIVERIES-th
  delivery, is written to `<stream>.dlq` (original fields + error, original_id, deliveries) and
  acked, atomically (MULTI).
- PostgreSQL unavailable is not the entry's fault: the entry in hand is retried in place with
  backoff (its idle time refreshed with XCLAIM JUSTID so no one takes it over) until it succeeds
  or the worker stops; it does not count towards MAX_DELIVERIES.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from service.access import RequestContext
from service.domain import SYSTEM, EventType, StoreUnavailable
from service.events.dead_letters import dead_letter
from service.events.entries import (
    CREATED,
    NOTHING_TO_DO,
    Entry,
    consumer_name,
    decode_ref,
    log_handled,
    order_id_of,
)
from service.events.heartbeat import no_beat
from service.events.stream import FailureStreak, StreamNames, sleep_unless, text
from service.observability.logging import request_id_var
from service.observability.tracing import NO_TRACER, Tracer
from service.orders import OrderService

log = logging.getLogger(__name__)

READ_COUNT = 500
HANDLED_AT_ONCE = 2
READ_BLOCK_MS = 1000
CLAIM_COUNT = 100


class Consumer:
    def __init__(
        self,
        service: OrderService,
        redis: aioredis.Redis,
        names: StreamNames,
        *,
        claim_idle_ms: int,
        max_deliveries: int,
        retry_backoff_ms: int = 1000,
        dlq_maxlen: int | None = None,
        name: str | None = None,
        tracer: Tracer = NO_TRACER,
        linger: float = 0.0,
        beat: Callable[[], None] = no_beat,
    ) -> None:
        """`beat`: called on every turn of the consumer's loops (worker liveness)."""
        self._beat = beat
        self._service = service
        self._linger = linger
        self._tracer = tracer
        self._redis = redis
        self._names = names
        self._claim_idle_ms = claim_idle_ms
        self._max_deliveries = max_deliveries
        self._retry_backoff_ms = retry_backoff_ms
        self._dlq_maxlen = dlq_maxlen
        self.name = name or consumer_name()
        self._streak = FailureStreak("Redis (consumer)")
        self._pg_streak = FailureStreak("PostgreSQL (consumer)")
        # entry id -> monotonic time of its next retry (entries this consumer failed)
        self._retry_at: dict[bytes, float] = {}
        self._autoclaim_cursor = b"0-0"
        self._next_autoclaim = 0.0
        self._group_ready = False
        self._in_hand: set[asyncio.Task[None]] = set()  # reads being handled (HANDLED_AT_ONCE at most)
        self.handled_total = 0

    # ---- loop -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the entries in hand are finished before returning."""
        try:
            while not stop.is_set():
                self._beat()
                try:
                    if not self._group_ready:
                        await self.ensure_group()
                    await self._round(stop)
                    self._streak.succeeded()
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):  # the stream or group was deleted: create it again
                        self._group_ready = False
                        continue
                    log.exception("consumer round failed")
                    await sleep_unless(stop, self._streak.failed(exc))
                except (RedisError, OSError) as exc:
                    await sleep_unless(stop, self._streak.failed(exc))
        finally:
            if self._in_hand:
                await asyncio.wait(self._in_hand)

    async def _handle_in_background(self, entries: list[Entry], stop: asyncio.Event) -> None:
        """Handle a read while the next one is read (HANDLED_AT_ONCE reads at most): a read's
        statements then overlap the next read instead of running strictly one after another.
        Entries of one order may be in two reads at once; only order.created entries change
        anything, and confirming is conditional on the order's version, so that is safe."""
        while len(self._in_hand) >= HANDLED_AT_ONCE:
            done, _ = await asyncio.wait(self._in_hand, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a failure (Redis gone during the XACK) surfaces in run()
        task = asyncio.create_task(self._handle_all(entries, stop))
        self._in_hand.add(task)
        task.add_done_callback(self._in_hand.discard)

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._names.stream, self._names.group, id="0", mkstream=True)
            log.info("consumer group created", extra={"stream": self._names.stream, "group": self._names.group})
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _round(self, stop: asyncio.Event) -> None:
        await self._retry_due(stop)
        now = time.monotonic()
        if now >= self._next_autoclaim:
            self._next_autoclaim = now + max(0.05, min(self._claim_idle_ms / 2000, 5.0))
            await self._take_over(stop)
        if stop.is_set():
            return
        block = READ_BLOCK_MS
        if self._retry_at:
            block = max(10, min(block, int((min(self._retry_at.values()) - time.monotonic()) * 1000)))
        block = max(10, min(block, int((self._next_autoclaim - time.monotonic()) * 1000)))
        response: Any = await self._redis.xreadgroup(
            self._names.group, self.name, {self._names.stream: ">"}, count=READ_COUNT, block=block
        )
        entries = [Entry(entry_id, fields, 1) for _, batch in response or () for entry_id, fields in batch if fields]
        if entries:
            await self._handle_in_background(entries, stop)
            if len(entries) < READ_COUNT and self._linger > 0:
                # More are on their way (a read returns as soon as one entry is there): let them
                # gather, so a busy stream is read and confirmed in batches, not entry by entry.
                await sleep_unless(stop, self._linger)

    async def _retry_due(self, stop: asyncio.Event) -> None:
        now = time.monotonic()
        due: list[Any] = [entry_id for entry_id, at in self._retry_at.items() if at <= now]
        if not due:
            return
        for entry_id in due:
            del self._retry_at[entry_id]
        claimed = await self._redis.xclaim(self._names.stream, self._names.group, self.name, 0, due)
        await self._handle_claimed(claimed, stop)

    async def _take_over(self, stop: asyncio.Event) -> None:
        """XAUTOCLAIM entries idle longer than CLAIM_IDLE_MS in any consumer (one that died)."""
        result = await self._redis.xautoclaim(
            self._names.stream,
            self._names.group,
            self.name,
            self._claim_idle_ms,
            start_id=self._autoclaim_cursor,
            count=CLAIM_COUNT,
        )
        self._autoclaim_cursor = result[0]
        claimed = result[1]
        if claimed:
            log.info("entries taken over", extra={"count": len(claimed), "consumer": self.name})
            for entry_id, _ in claimed:
                self._retry_at.pop(entry_id, None)
        await self._handle_claimed(claimed, stop)

    async def _handle_claimed(self, claimed: Sequence[Any], stop: asyncio.Event) -> None:
        live = [(entry_id, fields) for entry_id, fields in claimed if fields]
        if not live:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in live:
                pipe.xpending_range(self._names.stream, self._names.group, entry_id, entry_id, 1)
            pending = await pipe.execute()
        entries = []
        for (entry_id, fields), info in zip(live, pending, strict=True):
            if not info:  # acked meanwhile
                continue
            entries.append(Entry(entry_id, fields, int(info[0]["times_delivered"])))
        await self._handle_all(entries, stop)

    # ---- handling -------------------------------------------------------------------------------

    async def _handle_all(self, entries: list[Entry], stop: asyncio.Event) -> None:
        """Acknowledge what needs no work at once, confirm the created orders in one batch, and
        handle the rest entry by entry (entries of different orders concurrently, those of one
        order one after another)."""
        acks: list[bytes] = []
        creates: list[tuple[Entry, str]] = []
        one_by_one: list[Entry] = []
        batched = not self._tracer.enabled  # traced, each entry keeps its own CONSUMER span
        for entry in entries:
            event = entry.fields.get(b"event")
            if entry.deliveries > self._max_deliveries:
                one_by_one.append(entry)  # dead-lettered on its own
            elif batched and event in NOTHING_TO_DO:
                acks.append(entry.id)
                self.handled_total += 1
                if log.isEnabledFor(logging.DEBUG):
                    log_handled(entry, "ignored")
            elif batched and event == CREATED and (order_id := order_id_of(entry)) is not None:
                creates.append((entry, order_id))
            else:
                one_by_one.append(entry)
        if creates:
            done, left = await self._confirm_batch(creates, stop)
            acks += done
            one_by_one += left
        if one_by_one:
            acks += await self._handle_by_order(one_by_one, stop)
        if acks:
            await self._redis.xack(self._names.stream, self._names.group, *acks)

    async def _confirm_batch(
        self, creates: list[tuple[Entry, str]], stop: asyncio.Event
    ) -> tuple[list[bytes], list[Entry]]:
        """Confirm the orders of these order.created entries together. Returns the entries to
        acknowledge and those to handle one by one instead (when the batch failed for a reason
        other than PostgreSQL being unavailable, so that the entry at fault is found)."""
        requests = [
            (order_id, RequestContext(principal=SYSTEM, request_id=text(entry.fields, "request_id") or None))
            for entry, order_id in creates
        ]
        while True:
            try:
                outcomes = await self._service.confirm_many(requests)
            except StoreUnavailable as exc:
                if stop.is_set():
                    return [], []  # they stay pending; taken over after CLAIM_IDLE_MS
                await sleep_unless(stop, self._pg_streak.failed(exc))
                await self._keep_claimed(*(entry for entry, _ in creates))
                continue
            except Exception:
                log.warning("batch confirmation failed; handling its entries one by one", exc_info=True)
                return [], [entry for entry, _ in creates]
            self._pg_streak.succeeded()
            break
        self.handled_total += len(creates)
        if log.isEnabledFor(logging.DEBUG):
            for (entry, _), confirmed in zip(creates, outcomes, strict=True):
                log_handled(entry, "confirmed" if confirmed else "not pending")
        return [entry.id for entry, _ in creates], []

    async def _handle_by_order(self, entries: list[Entry], stop: asyncio.Event) -> list[bytes]:
        """Entries of different orders concurrently; those of one order one after another."""
        by_order: dict[object, list[Entry]] = {}
        for entry in entries:
            key: object
            try:
                key = decode_ref(entry.fields.get(b"payload", b"")).id
            except msgspec.DecodeError:
                key = entry.id
            by_order.setdefault(key, []).append(entry)
        groups = list(by_order.values())
        if len(groups) == 1:
            return await self._handle_sequence(groups[0], stop)
        results = await asyncio.gather(*(self._handle_sequence(group, stop) for group in groups))
        return [entry_id for result in results for entry_id in result]

    async def _handle_sequence(self, entries: list[Entry], stop: asyncio.Event) -> list[bytes]:
        acks: list[bytes] = []
        for entry in entries:
            if await self._handle_one(entry, stop):
                acks.append(entry.id)
        return acks

    async def _handle_one(self, entry: Entry, stop: asyncio.Event) -> bool:
        """Handle one entry; True when it may be acked now."""
        request_id = text(entry.fields, "request_id")
        token = request_id_var.set(request_id or None)
        try:
            if entry.deliveries > self._max_deliveries:
                await self._dead_letter(entry, "delivered more than MAX_DELIVERIES times without success")
                return False  # acked by _dead_letter
            while True:
                try:
                    outcome = await self._dispatch(entry, request_id)
                except StoreUnavailable as exc:
                    if stop.is_set():
                        return False  # stays pending; taken over after CLAIM_IDLE_MS
                    await sleep_unless(stop, self._pg_streak.failed(exc))
                    self._beat()  # waiting for PostgreSQL is not hanging
                    await self._keep_claimed(entry)
                    continue
                except Exception as exc:
                    return await self._failed(entry, exc)
                self._pg_streak.succeeded()
                break
            self.handled_total += 1
            log_handled(entry, outcome)
            return True
        finally:
            request_id_var.reset(token)

    async def _dispatch(self, entry: Entry, request_id: str) -> str:
        """One delivery attempt; traced as a CONSUMER span in the trace of the request that made the
        event (the outbox row's traceparent), so the consumer's work joins that trace."""
        if not self._tracer.enabled:
            return await self._process(entry, request_id)
        event = text(entry.fields, "event")
        with self._tracer.span(
            f"{self._names.stream} process",
            "consumer",
            parent=text(entry.fields, "traceparent") or None,
            attributes={
                "messaging.system": "redis",
                "messaging.operation.type": "process",
                "messaging.destination.name": self._names.stream,
                "messaging.consumer.group.name": self._names.group,
                "messaging.message.id": entry.id.decode(),
                "messaging.message.delivery_count": entry.deliveries,
                "orders.event": event,
                "orders.event_id": text(entry.fields, "event_id"),
            },
        ) as span:
            outcome = await self._process(entry, request_id)
            span.set_attribute("orders.outcome", outcome)
            return outcome

    async def _process(self, entry: Entry, request_id: str) -> str:
        event = text(entry.fields, "event")
        if event == EventType.CREATED:
            order_id = str(decode_ref(entry.fields.get(b"payload", b"")).id)
            ctx = RequestContext(
                principal=SYSTEM,
                request_id=request_id or None,
                traceparent=self._tracer.traceparent(text(entry.fields, "traceparent") or None),
            )
            confirmed = await self._service.confirm(order_id, ctx=ctx)
            return "confirmed" if confirmed else "not pending"
        if event in (EventType.UPDATED, EventType.DELETED):
            return "ignored"
        log.warning("unknown event type; acking it", extra={"event": event, "entry_id": entry.id.decode()})
        return "unknown event"

    async def _keep_claimed(self, *entries: Entry) -> None:
        """Reset the entries' idle time (JUSTID: delivery counts stay) while we wait for PostgreSQL."""
        with contextlib.suppress(RedisError, OSError):
            await self._redis.xclaim(
                self._names.stream, self._names.group, self.name, 0, [entry.id for entry in entries], justid=True
            )

    async def _failed(self, entry: Entry, exc: Exception) -> bool:
        if entry.deliveries >= self._max_deliveries:
            await self._dead_letter(entry, repr(exc))
            return False
        delay_ms = min(self._retry_backoff_ms * 2 ** (entry.deliveries - 1), self._claim_idle_ms)
        self._retry_at[entry.id] = time.monotonic() + delay_ms / 1000
        log.warning(
            "event handling failed; will retry",
            extra={
                "event": text(entry.fields, "event"),
                "entry_id": entry.id.decode(),
                "deliveries": entry.deliveries,
                "retry_in_ms": delay_ms,
                "error": repr(exc),
            },
        )
        return False

    async def _dead_letter(self, entry: Entry, error: str) -> None:
        await dead_letter(self._redis, self._names, entry, error, maxlen=self._dlq_maxlen)
        self._retry_at.pop(entry.id, None)
