"""OrderService: every business rule of the service. Talks to ports only."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import msgspec

from service.cursor import CursorCodec
from service.domain import (
    ANONYMOUS,
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_PRODUCT_LENGTH,
    MAX_QUANTITY,
    MIN_QUANTITY,
    SCOPE_ADMIN,
    SCOPE_READ,
    SCOPE_WRITE,
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
    PermissionDenied,
    Principal,
    ValidationFailed,
    VersionMismatch,
    can_transition,
)
from service.ports import Change, Clock, Decide, ExistingClaim, IdSource, OrderStore

MAX_IDEMPOTENCY_KEY_LENGTH = 255


class CreateResult(msgspec.Struct, frozen=True):
    order: Order
    replayed: bool


class RequestContext(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling, and where a change came from (carried into its event)."""

    principal: Principal = ANONYMOUS
    request_id: str | None = None
    traceparent: str | None = None


NO_CONTEXT = RequestContext()


def require(principal: Principal, scope: str) -> None:
    """Refuse (403 / PERMISSION_DENIED) a caller without `scope`."""
    if scope not in principal.scopes:
        raise PermissionDenied(scope)


def owner_filter(principal: Principal) -> str | None:
    """The owner whose orders the caller sees; None for an admin, who sees every owner's."""
    return None if SCOPE_ADMIN in principal.scopes else principal.owner


def _check_version(current: Order, expected_version: int | None) -> None:
    if expected_version is not None and current.version != expected_version:
        raise VersionMismatch(expected_version, current.version)


def _parsed_or_not_found(raw: str) -> uuid.UUID:
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


def _validate_product(product: object, violations: list[FieldViolation]) -> None:
    if not isinstance(product, str):
        violations.append(FieldViolation("product", "must be a string"))
    elif not product.strip():
        violations.append(FieldViolation("product", "must not be blank"))
    elif len(product) > MAX_PRODUCT_LENGTH:
        violations.append(FieldViolation("product", f"must be at most {MAX_PRODUCT_LENGTH} characters"))
    elif "\x00" in product:  # PostgreSQL text cannot hold NUL: it would fail as a 500 in the store
        violations.append(FieldViolation("product", "must not contain NUL characters"))


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

    def _event(self, kind: EventType, order: Order, owner: str, ctx: RequestContext) -> OrderEvent:
        return OrderEvent(
            id=self._ids.new_id(),
            type=kind,
            order=order,
            occurred_at=order.updated_at,
            owner=owner,
            actor=ctx.principal.actor,
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
        """Create an order owned by the caller (an admin too creates its own)."""
        require(ctx.principal, SCOPE_WRITE)
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
        stored = await self._store.create(order, self._event(EventType.CREATED, order, ctx.principal.owner, ctx), claim)
        if isinstance(stored, ExistingClaim):
            assert claim is not None
            if stored.fingerprint != claim.fingerprint:
                raise IdempotencyKeyReused()
            return CreateResult(stored.order, replayed=True)
        return CreateResult(stored, replayed=False)

    async def _read(self, order_id: str, principal: Principal) -> tuple[Order, str]:
        """The order and its owner; another owner's order is not found, exactly as if absent."""
        found = await self._store.get(_parsed_or_not_found(order_id))
        if found is None or (found[1] != principal.owner and SCOPE_ADMIN not in principal.scopes):
            raise OrderNotFound(order_id)
        return found

    async def get(self, order_id: str, *, ctx: RequestContext = NO_CONTEXT) -> Order:
        require(ctx.principal, SCOPE_READ)
        return (await self._read(order_id, ctx.principal))[0]

    async def list(
        self,
        limit: int | None = None,
        cursor: str | None = None,
        status: str | None = None,
        *,
        ctx: RequestContext = NO_CONTEXT,
    ) -> Page:
        """The caller's orders (an admin's: every owner's), newest first."""
        require(ctx.principal, SCOPE_READ)
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
        rows = await self._store.list_page(page_size + 1, before_id, status_filter, owner_filter(ctx.principal))
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
        require(ctx.principal, SCOPE_WRITE)
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

        def decide_for(owner: str) -> Decide:
            def decide(current: Order) -> Change:
                _check_version(current, expected_version)
                new_status = current.status if target_status is None else target_status
                if not can_transition(current.status, new_status):
                    raise InvalidTransition(current.status, new_status)
                new_product = current.product if product is None else product
                new_quantity = current.quantity if quantity is None else quantity
                if (new_product, new_quantity, new_status) == (current.product, current.quantity, current.status):
                    return current, None
                return self._next_version(
                    current, owner, ctx, product=new_product, quantity=new_quantity, status=new_status
                )

            return decide

        order, _ = await self._apply_change(order_id, ctx.principal, decide_for)
        return order

    async def delete(
        self, order_id: str, *, expected_version: int | None = None, ctx: RequestContext = NO_CONTEXT
    ) -> None:
        require(ctx.principal, SCOPE_WRITE)
        parsed = _parsed_or_not_found(order_id)
        current, owner = await self._read(order_id, ctx.principal)

        def decide(current: Order) -> OrderEvent:
            _check_version(current, expected_version)
            last_state = msgspec.structs.replace(current, updated_at=self._clock.now())
            return self._event(EventType.DELETED, last_state, owner, ctx)

        if await self._store.delete_if_version(parsed, current.version, decide(current)):
            return
        # Lost a race with another writer: decide again under the row lock.
        if not await self._store.delete_locked(parsed, decide):
            raise OrderNotFound(order_id)

    async def confirm(self, order_id: str, *, ctx: RequestContext = NO_CONTEXT) -> bool:
        """Confirm a still-pending order (the consumer's reaction to order.created).

        Returns False, changing nothing, when the order is gone or no longer pending, so a
        redelivered event is harmless.
        """

        def decide_for(owner: str) -> Decide:
            def decide(current: Order) -> Change:
                if current.status is not OrderStatus.PENDING:
                    return current, None
                return self._next_version(current, owner, ctx, status=OrderStatus.CONFIRMED)

            return decide

        require(ctx.principal, SCOPE_WRITE)
        try:
            _, changed = await self._apply_change(order_id, ctx.principal, decide_for)
        except OrderNotFound:
            return False
        return changed

    def _next_version(self, current: Order, owner: str, ctx: RequestContext, **fields: Any) -> Change:
        """The order with `fields` changed and its version bumped, and the event that says so."""
        changed = msgspec.structs.replace(current, version=current.version + 1, updated_at=self._clock.now(), **fields)
        return changed, self._event(EventType.UPDATED, changed, owner, ctx)

    async def _apply_change(
        self, order_id: str, principal: Principal, decide_for: Callable[[str], Decide]
    ) -> tuple[Order, bool]:
        """Apply `decide` to the order: optimistically first, under the row lock if that loses a race.

        Returns the resulting order and whether it changed. Concurrent writers therefore never
        lose one another's updates, and every one of them makes progress. An order's owner never
        changes, so the rule made for the owner read first holds under the lock too.
        """
        parsed = _parsed_or_not_found(order_id)
        current, owner = await self._read(order_id, principal)
        decide = decide_for(owner)
        changed, event = decide(current)
        if event is None:
            return changed, False
        if await self._store.replace_if_version(changed, current.version, event) is not None:
            return changed, True
        outcome = await self._store.change_locked(parsed, decide)
        if outcome is None:
            raise OrderNotFound(order_id)
        return outcome

    async def purge_expired_idempotency_keys(self, batch_size: int = 1000) -> int:
        return await self._store.purge_expired_claims(self._clock.now(), batch_size)
