"""What the service layer and the events relay need from the outside world, as Protocols (and the
Structs that cross them)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

import msgspec

from service.domain import IdempotencyClaim, Order, OrderEvent, OrderStatus, Principal


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
    """Persistence of orders. Every change stores its event in the same transaction.

    Every order has an owner, which never changes: the `owner` of the event that created it.
    """

    async def create(self, order: Order, event: OrderEvent, claim: IdempotencyClaim | None) -> Order | ExistingClaim:
        """Insert the order (owned by `event.owner`) and its event; with a claim, also store the
        key atomically. Keys are per owner: two owners may hold the same key.

        Returns the stored order, or the claim already held by a live (unexpired) key of this
        owner, in which case nothing was written.
        """
        ...

    async def get(self, order_id: uuid.UUID) -> tuple[Order, str] | None:
        """The order and its owner."""
        ...

    async def get_many(self, order_ids: list[uuid.UUID]) -> list[tuple[Order, str] | None]:
        """The orders of `order_ids` and their owners, in that order (None where absent), read together."""
        ...

    async def list_page(
        self, limit: int, before_id: uuid.UUID | None, status: OrderStatus | None, owner: str | None
    ) -> list[Order]:
        """Up to `limit` orders with id < before_id (all when None), newest (highest id) first;
        only `owner`'s when given."""
        ...

    async def replace_if_version(self, order: Order, expected_version: int, event: OrderEvent) -> Order | None:
        """Replace the order when its stored version is still `expected_version`; else None."""
        ...

    async def replace_many_if_version(self, changes: list[tuple[Order, int, OrderEvent]]) -> list[bool]:
        """`replace_if_version` for several different orders at once: for each (order, expected
        version, event), whether it was stored."""
        ...

    async def delete_if_version(self, order_id: uuid.UUID, expected_version: int, event: OrderEvent) -> bool:
        """Delete when the stored version is still `expected_version`; False otherwise."""
        ...

    async def change_locked(self, order_id: uuid.UUID, decide: Decide) -> tuple[Order, bool] | None:
        """Lock the order, apply `decide`, store the change and its event atomically.

        Returns (resulting order, changed), or None when the order does not exist. An exception
        from `decide` leaves everything as it was.
        """
        ...

    async def delete_locked(self, order_id: uuid.UUID, decide: DecideRemoval) -> bool:
        """Lock the order, let `decide` produce its deletion event (or raise), delete atomically.

        False when the order does not exist.
        """
        ...

    async def purge_expired_claims(self, now: datetime, limit: int) -> int:
        """Delete up to `limit` idempotency keys that expired before `now`; returns how many."""
        ...


class OutboxRecord(msgspec.Struct, frozen=True):
    """One outbox row as the relay publishes it; `payload` is the order JSON text."""

    id: int
    event_id: str
    event_type: str
    order_id: str
    payload: str
    request_id: str | None
    traceparent: str | None
    occurred_at: datetime
    owner: str | None = None  # None: a row written before events recorded it
    actor: str | None = None


class OutboxBacklog(msgspec.Struct, frozen=True):
    unpublished: int
    oldest_age_seconds: float | None


class RelaySession(Protocol):
    """One relay's hold on the outbox: the lock that makes it the active relay, its reads and marks."""

    async def try_lock(self) -> bool:
        """Become the active relay if none is; the lock lasts as long as this session."""
        ...

    async def claim_batch(self, limit: int) -> list[OutboxRecord]:
        """Up to `limit` unpublished rows, oldest first (outbox id order)."""
        ...

    async def mark_published(self, ids: list[int]) -> None:
        """These rows are published: kept for the retention, or removed at once when it is 0."""
        ...

    async def listen(self, on_notify: Callable[[], None]) -> None:
        """Call `on_notify` whenever rows are added. Best effort: callers also poll."""
        ...

    async def close(self) -> None: ...


class Outbox(Protocol):
    """The events written with each order change, waiting to be published."""

    def relay_session(self) -> AbstractAsyncContextManager[RelaySession]:
        """A session of its own for one relay, closed (and its lock released) on exit."""
        ...

    async def purge_published(self, limit: int) -> int:
        """Remove up to `limit` rows published longer than the retention ago; returns how many."""
        ...

    async def backlog(self) -> OutboxBacklog:
        """Unpublished rows (an upper bound, cheap at any size) and the oldest one's age."""
        ...


class PublishFailed(Exception):
    """A batch may not have been published; its cause is the transport's own error."""


class EventPublisher(Protocol):
    """Where the relay sends outbox rows (the events stream)."""

    @property
    def system(self) -> str:
        """The transport's name, as logs say it (e.g. "Redis")."""
        ...

    @property
    def destination(self) -> str:
        """The stream (or topic) published to."""
        ...

    async def publish(self, records: Sequence[OutboxRecord]) -> None:
        """Publish every record, in order; raise PublishFailed when some may not have been."""
        ...


class FeedEntry(msgspec.Struct, frozen=True):
    """One change of one order as the change feed delivers it; `cursor` is its place in the feed."""

    cursor: str
    event: str
    order: Order
    event_id: str
    occurred_at: str
    owner: str | None


class FeedBounds(msgspec.Struct, frozen=True):
    """What the feed still holds: the cursor of its oldest change (None: none held), the last
    cursor it ever issued ("0-0" when none), and whether any change ever left it (trimmed)."""

    first: str | None
    last: str
    trimmed: bool


class WatchSpec(msgspec.Struct, frozen=True):
    """Which changes a watcher receives, as the service layer decided.

    `order_ids`: None for every order. `visible`: None when the watcher may see every owner's
    changes, else the test of one change's owner.
    """

    order_ids: frozenset[str] | None
    visible: Callable[[str | None], bool] | None


class ChangeSubscription(Protocol):
    """One watcher's place in the feed, with a bounded buffer of its own."""

    async def changes(self, wait_seconds: float) -> list[FeedEntry]:
        """The next changes in feed order (at least one), or [] when none arrived within `wait_seconds`.

        Raises StopAsyncIteration once the feed shuts down (after every change already buffered),
        WatcherTooSlow when the buffer overflowed, CursorExpired (after every change already
        buffered) when changes after those were trimmed from the feed before it read them.
        """
        ...

    @property
    def ending(self) -> bool:
        """The watch is over but for `changes()` saying so: the buffer overflowed (WatcherTooSlow),
        changes were trimmed unread (what is buffered, then CursorExpired), or the feed shuts down
        (what is buffered, then StopAsyncIteration)."""
        ...

    def close(self) -> None: ...


class ChangeFeed(Protocol):
    """Every change of every order, in order, from the events stream; one reader per process."""

    async def bounds(self) -> FeedBounds: ...

    async def subscribe(self, after: str | None, spec: WatchSpec) -> ChangeSubscription:
        """The changes after cursor `after` (None: from now) that `spec` selects.

        With a cursor, the first changes after it have been read when this returns, so that a
        `bounds()` read afterwards tells whether any change after it was already gone.
        """
        ...


class PoolStats(msgspec.Struct, frozen=True):
    size: int
    max_size: int
    in_use: int
    idle: int
    waiting: int
    waits_total: int
    acquire_timeouts_total: int
    shed_total: int = 0  # requests refused at once: too many were already waiting


# What `GET /metrics/events` answers (service.events.metrics; its schema is in the OpenAPI document).
class OutboxFigures(msgspec.Struct):
    backlog: int | None = None
    oldest_unpublished_age_seconds: float | None = None
    error: str | None = None


class StreamFigures(msgspec.Struct):
    name: str
    length: int | None = None
    group: str | None = None
    consumers: int | None = None
    pending: int | None = None
    lag: int | None = None
    dlq: str | None = None
    dlq_length: int | None = None
    error: str | None = None


class EventsFigures(msgspec.Struct):
    outbox: OutboxFigures
    stream: StreamFigures


class Authenticator(Protocol):
    """Who a call comes from, from its `Authorization` header (REST) or metadata (gRPC)."""

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller's principal; raise Unauthenticated when the credentials are absent or bad."""
        ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class IdSource(Protocol):
    def new_id(self) -> uuid.UUID:
        """A new time-ordered (UUIDv7) id."""
        ...
