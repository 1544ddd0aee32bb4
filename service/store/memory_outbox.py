"""In-memory Outbox: the fake of the outbox table for unit tests of the relay. Same contract as postgres.

One flag stands in for the advisory lock (one active relay per outbox), and `listen` callbacks
stand in for LISTEN/NOTIFY: each is called when rows are added.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import msgspec

from service.domain import OrderEvent
from service.ports import OutboxBacklog, OutboxRecord

_encode_json = msgspec.json.Encoder().encode


class MemoryRelaySession:
    def __init__(self, outbox: MemoryOutbox) -> None:
        self._outbox = outbox
        self._on_notify: Callable[[], None] | None = None

    async def try_lock(self) -> bool:
        if self._outbox.lock_holder is None:
            self._outbox.lock_holder = self
        return self._outbox.lock_holder is self

    async def claim_batch(self, limit: int) -> list[OutboxRecord]:
        published = self._outbox.published
        return [record for record in self._outbox.records if record.id not in published][:limit]

    async def mark_published(self, ids: list[int]) -> None:
        self._outbox.mark(ids)

    async def listen(self, on_notify: Callable[[], None]) -> None:
        self._on_notify = on_notify
        self._outbox.listeners.append(on_notify)

    async def close(self) -> None:
        if self._on_notify is not None:
            self._outbox.listeners.remove(self._on_notify)
            self._on_notify = None
        if self._outbox.lock_holder is self:
            self._outbox.lock_holder = None


class MemoryOutbox:
    """Rows in id order; `published` holds the ids marked published.

    `retention` as the PostgreSQL outbox's, in seconds: 0 removes rows from `records` once
    published, more keeps them until `purge_published` finds them older; None (the default,
    for tests that inspect rows) keeps them.
    """

    def __init__(self, retention: float | None = None) -> None:
        self.records: list[OutboxRecord] = []
        self.published: set[int] = set()
        self.retention = retention
        self._published_at: dict[int, float] = {}
        self.lock_holder: MemoryRelaySession | None = None
        self.listeners: list[Callable[[], None]] = []
        self._added_at: dict[int, float] = {}  # monotonic time of each row's insert, for the backlog age
        self._next_id = 1

    def add(self, event: OrderEvent) -> OutboxRecord:
        """Store the row of one event (as the order store's statement does) and notify listeners."""
        record = OutboxRecord(
            id=self._next_id,
            event_id=str(event.id),
            event_type=event.type.value,
            order_id=str(event.order.id),
            payload=_encode_json(event.order).decode(),
            request_id=event.request_id,
            traceparent=event.traceparent,
            occurred_at=event.occurred_at,
            owner=event.owner,
            actor=event.actor,
        )
        self.records.append(record)
        self._next_id += 1
        self._added_at[record.id] = time.monotonic()
        for on_notify in list(self.listeners):
            on_notify()
        return record

    def mark(self, ids: list[int]) -> None:
        self.published.update(ids)
        now = time.monotonic()
        for row_id in ids:
            self._published_at.setdefault(row_id, now)
        if self.retention == 0:
            done = set(ids)
            self.records = [record for record in self.records if record.id not in done]

    async def purge_published(self, limit: int) -> int:
        if self.retention is None:
            return 0
        cutoff = time.monotonic() - self.retention
        stored = {record.id for record in self.records}
        due = sorted((at, row_id) for row_id, at in self._published_at.items() if at < cutoff and row_id in stored)
        doomed = {row_id for _, row_id in due[:limit]}
        self.records = [record for record in self.records if record.id not in doomed]
        return len(doomed)

    @asynccontextmanager
    async def relay_session(self) -> AsyncIterator[MemoryRelaySession]:
        session = MemoryRelaySession(self)
        try:
            yield session
        finally:
            await session.close()

    async def backlog(self) -> OutboxBacklog:
        unpublished = [record.id for record in self.records if record.id not in self.published]
        if not unpublished:
            return OutboxBacklog(unpublished=0, oldest_age_seconds=None)
        age = time.monotonic() - self._added_at[unpublished[0]]
        return OutboxBacklog(unpublished=len(unpublished), oldest_age_seconds=max(0.0, age))
