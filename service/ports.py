"""What the service layer needs from the outside world, as Protocols."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Protocol

import msgspec

from service.domain import IdempotencyClaim, Order, OrderEvent, OrderStatus


class ExistingClaim(msgspec.Struct, frozen=True, kw_only=True):
    """An idempotency key that was already stored, with what it produced."""

    fingerprint: bytes
    order: Order


class OrderStore(Protocol):
    """Persistence of orders. Every change stores its event in the same transaction."""

    async def create(
        self, order: Order, event: OrderEvent, claim: IdempotencyClaim | None
    ) -> Order | ExistingClaim:
        """Insert the order and its event; with a claim, also store the key atomically.

        Returns the stored order, or the claim already held by a live (unexpired) key, in which
        case nothing was written.
        """
        ...

    async def get(self, order_id: uuid.UUID) -> Order | None: ...

    async def list_page(
        self, limit: int, before_id: uuid.UUID | None, status: OrderStatus | None
    ) -> list[Order]:
        """Up to `limit` orders with id < before_id (all when None), newest (highest id) first."""
        ...

    async def update(self, order: Order, expected_version: int, event: OrderEvent) -> Order | None:
        """Replace the order when its stored version is still `expected_version`; else None."""
        ...

    async def delete(self, order_id: uuid.UUID, expected_version: int, event: OrderEvent) -> bool:
        """Delete when the stored version is still `expected_version`; False otherwise."""
        ...

    async def purge_expired_claims(self, now: datetime, limit: int) -> int:
        """Delete up to `limit` idempotency keys that expired before `now`; returns how many."""
        ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class IdSource(Protocol):
    def new_id(self) -> uuid.UUID:
        """A new time-ordered (UUIDv7) id."""
        ...
