"""Deterministic fakes of the service's own ports (clock and ids) for unit tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from service.cursor import CursorCodec
from service.orders import OrderService
from service.ports import ChangeFeed
from service.store.memory import MemoryOrderStore


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


class SequentialIds:
    """Increasing ids, like UUIDv7's time order."""

    def __init__(self) -> None:
        self.counter = 0

    def new_id(self) -> uuid.UUID:
        self.counter += 1
        return uuid.UUID(int=(0x0190 << 112) | self.counter)


def make_service(
    ttl_seconds: int = 3600, changes: ChangeFeed | None = None
) -> tuple[OrderService, MemoryOrderStore, FakeClock]:
    store = MemoryOrderStore()
    clock = FakeClock()
    service = OrderService(
        store,
        clock,
        SequentialIds(),
        CursorCodec(b"test-key"),
        idempotency_ttl=timedelta(seconds=ttl_seconds),
        changes=changes,
    )
    return service, store, clock
