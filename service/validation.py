"""The service layer's checks of what callers send: order fields, ids, statuses, idempotency
keys, change cursors; pure functions, no I/O."""

from __future__ import annotations

import hashlib
import uuid

import msgspec

from service.domain import (
    MAX_PRODUCT_LENGTH,
    MAX_QUANTITY,
    MIN_QUANTITY,
    CursorExpired,
    FieldViolation,
    Order,
    OrderNotFound,
    OrderStatus,
    ValidationFailed,
    VersionMismatch,
)
from service.ports import FeedBounds

MAX_IDEMPOTENCY_KEY_LENGTH = 255


_MAX_CURSOR_PART = 2**64 - 1


def check_version(current: Order, expected_version: int | None) -> None:
    if expected_version is not None and current.version != expected_version:
        raise VersionMismatch(expected_version, current.version)


def parsed_or_not_found(raw: str) -> uuid.UUID:
    parsed = parse_order_id(raw)
    if parsed is None:
        raise OrderNotFound(raw)
    return parsed


def parse_order_id(raw: str) -> uuid.UUID | None:
    if len(raw) != 36:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


def parse_change_cursor(raw: str) -> tuple[int, int] | None:
    """A change cursor is the feed position `<milliseconds>-<sequence>`; None when malformed."""
    ms, sep, seq = raw.partition("-")
    if not sep or not (ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        return None
    if len(ms) > 20 or len(seq) > 20:
        return None
    position = int(ms), int(seq)
    return position if max(position) <= _MAX_CURSOR_PART else None


def check_resume(cursor: str, position: tuple[int, int], bounds: FeedBounds) -> None:
    """Resuming after `cursor` is exact only when no change after it has left the feed."""
    last = parse_change_cursor(bounds.last)
    if last is not None and position > last:
        raise ValidationFailed([FieldViolation("after", "is ahead of the change feed: not a cursor it issued")])
    if not bounds.trimmed:  # the feed still holds every change it ever had
        return
    first = parse_change_cursor(bounds.first) if bounds.first is not None else None
    if first is None:
        if last is not None and position < last:  # every change after it is gone
            raise CursorExpired(cursor)
    elif first > position:  # changes between the cursor and the oldest one held may be gone
        raise CursorExpired(cursor)


def validate_product(product: object, violations: list[FieldViolation]) -> None:
    if not isinstance(product, str):
        violations.append(FieldViolation("product", "must be a string"))
    elif not product.strip():
        violations.append(FieldViolation("product", "must not be blank"))
    elif len(product) > MAX_PRODUCT_LENGTH:
        violations.append(FieldViolation("product", f"must be at most {MAX_PRODUCT_LENGTH} characters"))
    elif "\x00" in product:  # PostgreSQL text cannot hold NUL: it would fail as a 500 in the store
        violations.append(FieldViolation("product", "must not contain NUL characters"))


def validate_quantity(quantity: object, violations: list[FieldViolation]) -> None:
    if not isinstance(quantity, int) or isinstance(quantity, bool):
        violations.append(FieldViolation("quantity", "must be an integer"))
    elif not MIN_QUANTITY <= quantity <= MAX_QUANTITY:
        violations.append(FieldViolation("quantity", f"must be between {MIN_QUANTITY} and {MAX_QUANTITY}"))


def parse_status(raw: str, field: str = "status") -> OrderStatus:
    try:
        return OrderStatus(raw)
    except ValueError:
        allowed = ", ".join(s.value for s in OrderStatus)
        raise ValidationFailed([FieldViolation(field, f"must be one of: {allowed}")]) from None


def validate_idempotency_key(key: str) -> None:
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not all(33 <= ord(c) <= 126 for c in key):
        raise ValidationFailed(
            [
                FieldViolation(
                    "Idempotency-Key",
                    f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII characters",
                )
            ]
        )


def request_fingerprint(product: str, quantity: int) -> bytes:
    """Identifies a create request independent of transport and JSON formatting."""
    return hashlib.sha256(msgspec.msgpack.encode((product, quantity))).digest()
