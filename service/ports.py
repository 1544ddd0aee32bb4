"""What the service layer needs from the outside world, as Protocols."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import msgspec

from service.domain import IdempotencyClaim, Order, OrderEvent, OrderStatus


class ExistingClaim(msgspec.Struct, frozen=True, kw_only=True):
    """An idempotency key that was already stored, with what it produced."""

    fingerprint: bytes
    order: Order


# A rule applied to the current order: the new order and its event, or (current, None) for no
# change; it may raise a DomainError to refuse. Stores call it under the order's row lock.
Change = tuple[Order, OrderEvent | None]
Decide = Callable[[Order], Change]
DecideRemoval = Callable[[Order], OrderEvent]


class OrderStore(Protocol):
    """Persistence of orders. Every change stores its event in the same transaction."""

    async def create(self, order: Order, event: OrderEvent, claim: IdempotencyClaim | None) -> Order | ExistingClaim:
        """Insert the order and its event; with a claim, also store the key atomically.

        Returns the stored order, or the claim already held by a live (unexpired) key, in which
        case nothing was written.
        """
        ...

    async def get(self, order_id: uuid.UUID) -> Order | None: ...

    async def list_page(self, limit: int, before_id: uuid.UUID | None, status: OrderStatus | None) -> list[Order]:
        """Up to `limit` orders with id < before_id (all when None), newest (highest id) first."""
        ...

    async def update(self, order: Order, expected_version: int, event: OrderEvent) -> Order | None:
        """Replace the order when its stored version is still `expected_version`; else None."""
        ...

    async def delete(self, order_id: uuid.UUID, expected_version: int, event: OrderEvent) -> bool:
        """Delete when the stored version is still `expected_version`; False otherwise."""
        ...

    async def modify(self, order_id: uuid.UUID, decide: Decide) -> tuple[Order, bool] | None:
        """Lock the order, apply `decide`, store the change and its event atomically.

        Returns (resulting order, changed), or None when the order does not exist. An exception
        from `decide` leaves everything as it was.
        """
        ...

    async def remove(self, order_id: uuid.UUID, decide: DecideRemoval) -> bool:
        """Lock the order, let `decide` produce its deletion event (or raise), delete atomically.

        False when the order does not exist.
        """
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
