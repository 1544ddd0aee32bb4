"""Orders, their statuses and allowed transitions, and the domain's errors. No I/O."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

import msgspec

MAX_PRODUCT_LENGTH = 255
MIN_QUANTITY = 1
MAX_QUANTITY = 1_000_000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100

# Scopes of a caller (OAuth2-style): read its orders, change them, and see every owner's orders.
SCOPE_READ = "orders:read"
SCOPE_WRITE = "orders:write"
SCOPE_ADMIN = "orders:admin"
ALL_SCOPES = frozenset((SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN))
ANONYMOUS_OWNER = "anonymous"  # the one owner of every order when AUTH_MODE=none


class OrderStatus(enum.StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


ALLOWED_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.CONFIRMED, OrderStatus.CANCELLED}),
    OrderStatus.CONFIRMED: frozenset({OrderStatus.CANCELLED}),
    OrderStatus.CANCELLED: frozenset(),
}


def can_transition(current: OrderStatus, target: OrderStatus) -> bool:
    """Same status is always allowed (no change); otherwise only the edges above."""
    return current == target or target in ALLOWED_TRANSITIONS[current]


class Order(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    product: str
    quantity: int
    status: OrderStatus
    version: int
    created_at: datetime
    updated_at: datetime


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling: the owner its orders belong to, the subject recorded as actor, its scopes."""

    owner: str
    actor: str
    scopes: frozenset[str]


# AUTH_MODE=none: every caller is this one, with every scope.
ANONYMOUS = Principal(owner=ANONYMOUS_OWNER, actor=ANONYMOUS_OWNER, scopes=ALL_SCOPES)
# The event consumer's confirmations: any owner's order, recorded under this actor.
SYSTEM = Principal(owner="system", actor="system:orders-consumer", scopes=ALL_SCOPES)


class EventType(enum.StrEnum):
    CREATED = "order.created"
    UPDATED = "order.updated"
    DELETED = "order.deleted"


class OrderEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event the service emits with a change; stored in the outbox in the same transaction."""

    id: uuid.UUID
    type: EventType
    order: Order
    occurred_at: datetime
    owner: str = ANONYMOUS_OWNER  # whose order it is
    actor: str = ANONYMOUS_OWNER  # who made the change (the token's subject)
    request_id: str | None = None
    traceparent: str | None = None


class IdempotencyClaim(msgspec.Struct, frozen=True, kw_only=True):
    """A key a client sent with a create, with the fingerprint of the request it names."""

    key: str
    fingerprint: bytes
    expires_at: datetime


class FieldViolation(msgspec.Struct, frozen=True):
    field: str
    message: str


class Page(msgspec.Struct, frozen=True, kw_only=True):
    orders: list[Order]
    next_cursor: str | None


# ---- errors -------------------------------------------------------------------------------------


class DomainError(Exception):
    """Base of every error the service layer raises on purpose."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ValidationFailed(DomainError):
    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.message}" for v in violations))
        self.violations = violations


class OrderNotFound(DomainError):
    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id} not found")


class InvalidTransition(DomainError):
    def __init__(self, current: OrderStatus, target: OrderStatus) -> None:
        super().__init__(f"status cannot change from {current.value} to {target.value}")
        self.current = current
        self.target = target


class VersionMismatch(DomainError):
    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"order is at version {actual}, not the expected {expected}")
        self.expected = expected
        self.actual = actual


class IdempotencyKeyReused(DomainError):
    """The key was used before with a different request body."""

    def __init__(self) -> None:
        super().__init__("idempotency key was already used with a different request")


class Unauthenticated(DomainError):
    """No bearer token (`invalid_token` False), or one that is malformed, expired or not ours."""

    def __init__(self, detail: str, *, invalid_token: bool) -> None:
        super().__init__(detail)
        self.invalid_token = invalid_token


class PermissionDenied(DomainError):
    """A valid token without the scope the operation needs."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"this operation needs the scope {scope}")
        self.scope = scope


class StoreUnavailable(Exception):
    """The order store cannot be reached (raised by adapters, mapped to 503/UNAVAILABLE)."""


class CursorExpired(DomainError):
    """A watch resumes from a cursor older than the event stream still holds: changes are gone."""

    def __init__(self, cursor: str) -> None:
        super().__init__(
            f"cursor {cursor} is older than the oldest change still held; "
            "read the orders afresh, then watch from now (no cursor)"
        )


class WatcherTooSlow(DomainError):
    """A watcher fell more changes behind than its buffer holds and was closed."""

    def __init__(self, capacity: int) -> None:
        super().__init__(
            f"the watcher fell more than {capacity} changes behind and was closed; resume from its last cursor"
        )


class ChangesUnavailable(Exception):
    """The change feed (the events stream) cannot be reached, or is shutting down (503/UNAVAILABLE)."""


class StoreOverloaded(StoreUnavailable):
    """More requests wait for a database connection than this process can serve soon: the request
    is refused at once (503 / RESOURCE_EXHAUSTED) instead of joining the queue."""
