"""OrderService: every business rule of the service. Talks to ports only."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import msgspec

from service.cursor import CursorCodec
from service.domain import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_PRODUCT_LENGTH,
    MAX_QUANTITY,
    MIN_QUANTITY,
    EventType,
    FieldViolation,
    IdempotencyClaim,
    IdempotencyKeyReused,
    InvalidTransition,
    Order,
    OrderEvent,
    OrderNotFound,
    OrderStatus,
    Page,
    ValidationFailed,
    VersionMismatch,
    can_transition,
)
from service.ports import Clock, ExistingClaim, IdSource, OrderStore

MAX_IDEMPOTENCY_KEY_LENGTH = 255
# Optimistic-concurrency retries for changes without an expected version; each retry re-reads the
# order and re-checks every rule, so a lost race can never lose an update.
MAX_WRITE_ATTEMPTS = 8


class ConcurrentModification(Exception):
    """The order kept changing under a write; the client may retry."""


class CreateResult(msgspec.Struct, frozen=True):
    order: Order
    replayed: bool


class RequestContext(msgspec.Struct, frozen=True, kw_only=True):
    """Where a change came from, carried into its event."""

    request_id: str | None = None
    traceparent: str | None = None


NO_CONTEXT = RequestContext()


def parse_order_id(raw: str) -> uuid.UUID | None:
    if len(raw) != 36:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


def _validate_product(product: object, violations: list[FieldViolation]) -> None:
    if not isinstance(product, str):
        violations.append(FieldViolation("product", "must be a string"))
    elif not product.strip():
        violations.append(FieldViolation("product", "must not be blank"))
    elif len(product) > MAX_PRODUCT_LENGTH:
        violations.append(FieldViolation("product", f"must be at most {MAX_PRODUCT_LENGTH} characters"))


def _validate_quantity(quantity: object, violations: list[FieldViolation]) -> None:
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


class OrderService:
    def __init__(
        self,
        store: OrderStore,
        clock: Clock,
        ids: IdSource,
        cursors: CursorCodec,
        idempotency_ttl: timedelta = timedelta(hours=24),
    ) -> None:
        self._store = store
        self._clock = clock
        self._ids = ids
        self._cursors = cursors
        self._idempotency_ttl = idempotency_ttl

    def _event(self, kind: EventType, order: Order, ctx: RequestContext) -> OrderEvent:
        return OrderEvent(
            id=self._ids.new_id(),
            type=kind,
            order=order,
            occurred_at=order.updated_at,
            request_id=ctx.request_id,
            traceparent=ctx.traceparent,
        )

    async def create(
        self,
        product: str,
        quantity: int,
        *,
        idempotency_key: str | None = None,
        ctx: RequestContext = NO_CONTEXT,
    ) -> CreateResult:
        violations: list[FieldViolation] = []
        _validate_product(product, violations)
        _validate_quantity(quantity, violations)
        if violations:
            raise ValidationFailed(violations)
        now = self._clock.now()
        claim = None
        if idempotency_key is not None:
            validate_idempotency_key(idempotency_key)
            claim = IdempotencyClaim(
                key=idempotency_key,
                fingerprint=request_fingerprint(product, quantity),
                expires_at=now + self._idempotency_ttl,
            )
        order = Order(
            id=self._ids.new_id(),
            product=product,
            quantity=quantity,
            status=OrderStatus.PENDING,
            version=1,
            created_at=now,
            updated_at=now,
        )
        stored = await self._store.create(order, self._event(EventType.CREATED, order, ctx), claim)
        if isinstance(stored, ExistingClaim):
            assert claim is not None
            if stored.fingerprint != claim.fingerprint:
                raise IdempotencyKeyReused()
            return CreateResult(stored.order, replayed=True)
        return CreateResult(stored, replayed=False)

    async def get(self, order_id: str) -> Order:
        parsed = parse_order_id(order_id)
        order = await self._store.get(parsed) if parsed is not None else None
        if order is None:
            raise OrderNotFound(order_id)
        return order

    async def list(
        self, limit: int | None = None, cursor: str | None = None, status: str | None = None
    ) -> Page:
        violations: list[FieldViolation] = []
        page_size = DEFAULT_PAGE_SIZE if limit is None else limit
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            violations.append(FieldViolation("limit", f"must be between 1 and {MAX_PAGE_SIZE}"))
        before_id = None
        if cursor:
            before_id = self._cursors.decode(cursor)
            if before_id is None:
                violations.append(FieldViolation("cursor", "is not a valid page cursor"))
        status_filter = None
        if status:
            try:
                status_filter = parse_status(status)
            except ValidationFailed as exc:
                violations.extend(exc.violations)
        if violations:
            raise ValidationFailed(violations)
        rows = await self._store.list_page(page_size + 1, before_id, status_filter)
        if len(rows) > page_size:
            rows = rows[:page_size]
            return Page(orders=rows, next_cursor=self._cursors.encode(rows[-1].id))
        return Page(orders=rows, next_cursor=None)

    async def update(
        self,
        order_id: str,
        *,
        product: str | None = None,
        quantity: int | None = None,
        status: str | None = None,
        expected_version: int | None = None,
        ctx: RequestContext = NO_CONTEXT,
    ) -> Order:
        """Change product, quantity and/or status (None = unchanged) under the transition rules."""
        violations: list[FieldViolation] = []
        if product is not None:
            _validate_product(product, violations)
        if quantity is not None:
            _validate_quantity(quantity, violations)
        target_status = None
        if status is not None:
            try:
                target_status = parse_status(status)
            except ValidationFailed as exc:
                violations.extend(exc.violations)
        if violations:
            raise ValidationFailed(violations)
        parsed = parse_order_id(order_id)
        if parsed is None:
            raise OrderNotFound(order_id)
        for _ in range(MAX_WRITE_ATTEMPTS):
            current = await self._current(parsed, order_id, expected_version)
            new_status = current.status if target_status is None else target_status
            if not can_transition(current.status, new_status):
                raise InvalidTransition(current.status, new_status)
            new_product = current.product if product is None else product
            new_quantity = current.quantity if quantity is None else quantity
            if (new_product, new_quantity, new_status) == (
                current.product,
                current.quantity,
                current.status,
            ):
                return current
            changed = msgspec.structs.replace(
                current,
                product=new_product,
                quantity=new_quantity,
                status=new_status,
                version=current.version + 1,
                updated_at=self._clock.now(),
            )
            event = self._event(EventType.UPDATED, changed, ctx)
            stored = await self._store.update(changed, current.version, event)
            if stored is not None:
                return stored
        raise ConcurrentModification()

    async def delete(
        self, order_id: str, *, expected_version: int | None = None, ctx: RequestContext = NO_CONTEXT
    ) -> None:
        parsed = parse_order_id(order_id)
        if parsed is None:
            raise OrderNotFound(order_id)
        for _ in range(MAX_WRITE_ATTEMPTS):
            current = await self._current(parsed, order_id, expected_version)
            last_state = msgspec.structs.replace(current, updated_at=self._clock.now())
            if await self._store.delete(
                parsed, current.version, self._event(EventType.DELETED, last_state, ctx)
            ):
                return
        raise ConcurrentModification()

    async def confirm(self, order_id: str, *, ctx: RequestContext = NO_CONTEXT) -> bool:
        """Confirm a still-pending order (the consumer's reaction to order.created).

        Returns False, changing nothing, when the order is gone or no longer pending, so a
        redelivered event is harmless.
        """
        for _ in range(MAX_WRITE_ATTEMPTS):
            try:
                current = await self.get(order_id)
                if current.status is not OrderStatus.PENDING:
                    return False
                await self.update(
                    order_id,
                    status=OrderStatus.CONFIRMED.value,
                    expected_version=current.version,
                    ctx=ctx,
                )
                return True
            except OrderNotFound:
                return False
            except VersionMismatch:
                continue  # changed under us (maybe only its product): look again
        raise ConcurrentModification()

    async def purge_expired_idempotency_keys(self, batch_size: int = 1000) -> int:
        return await self._store.purge_expired_claims(self._clock.now(), batch_size)

    async def _current(self, parsed: uuid.UUID, raw_id: str, expected_version: int | None) -> Order:
        current = await self._store.get(parsed)
        if current is None:
            raise OrderNotFound(raw_id)
        if expected_version is not None and current.version != expected_version:
            raise VersionMismatch(expected_version, current.version)
        return current
