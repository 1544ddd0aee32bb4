"""OrderService: every business rule of the service. Talks to ports only."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import msgspec

from service.access import (
    NO_CONTEXT,
    RequestContext,
    authorize,
    may_see,
    may_watch,
    owner_filter,
    sees_every_owner,
)
from service.cursor import CursorCodec
from service.domain import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    ChangesUnavailable,
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
    Principal,
    ValidationFailed,
    can_transition,
)
from service.ports import (
    Change,
    ChangeFeed,
    ChangeSubscription,
    Clock,
    Decide,
    ExistingClaim,
    IdSource,
    OrderStore,
    WatchSpec,
)
from service.validation import (
    check_resume,
    check_version,
    parse_change_cursor,
    parse_order_id,
    parse_status,
    parsed_or_not_found,
    request_fingerprint,
    validate_idempotency_key,
    validate_product,
    validate_quantity,
)

MAX_WATCHED_ORDERS = 100
# Read-then-conditional-write tries of a change before it takes the row lock (see _apply_change).
_OPTIMISTIC_TRIES = 2

# (order, expected version, event) per change; spelled here because OrderService.list shadows `list`.
_Replacements = list[tuple[Order, int, OrderEvent]]
_Indexes = list[int]
_Flags = list[bool]


class CreateResult(msgspec.Struct, frozen=True):
    order: Order
    replayed: bool


class OrderService:
    def __init__(
        self,
        store: OrderStore,
        clock: Clock,
        ids: IdSource,
        cursors: CursorCodec,
        idempotency_ttl: timedelta = timedelta(hours=24),
        changes: ChangeFeed | None = None,
    ) -> None:
        self._changes = changes
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
        authorize("create", ctx.principal)
        violations: list[FieldViolation] = []
        validate_product(product, violations)
        validate_quantity(quantity, violations)
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
        found = await self._store.get(parsed_or_not_found(order_id))
        if found is None or not may_see(principal, found[1]):
            raise OrderNotFound(order_id)
        return found

    async def get(self, order_id: str, *, ctx: RequestContext = NO_CONTEXT) -> Order:
        authorize("get", ctx.principal)
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
        authorize("list", ctx.principal)
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
        authorize("update", ctx.principal)
        violations: list[FieldViolation] = []
        if product is not None:
            validate_product(product, violations)
        if quantity is not None:
            validate_quantity(quantity, violations)
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
                check_version(current, expected_version)
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
        authorize("delete", ctx.principal)
        parsed = parsed_or_not_found(order_id)
        current, owner = await self._read(order_id, ctx.principal)

        def decide(current: Order) -> OrderEvent:
            check_version(current, expected_version)
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

        authorize("confirm", ctx.principal)
        try:
            _, changed = await self._apply_change(order_id, ctx.principal, decide_for)
        except OrderNotFound:
            return False
        return changed

    async def confirm_many(self, requests: Sequence[tuple[str, RequestContext]]) -> _Flags:
        """`confirm` for many orders at once (the consumer's batch): one read and one conditional
        update for the lot; an order another writer changed meanwhile is confirmed on its own,
        under its row lock. For each request, whether it confirmed the order (a repeated id: only
        its first request can). Each request's principal must be allowed to change the order."""
        confirmed = [False] * len(requests)
        first_request: dict[uuid.UUID, int] = {}
        for index, (raw_id, ctx) in enumerate(requests):
            authorize("confirm", ctx.principal)
            parsed = parse_order_id(raw_id)
            if parsed is not None:
                first_request.setdefault(parsed, index)
        order_ids = list(first_request)
        changes: _Replacements = []
        changed_request: _Indexes = []
        for order_id, found in zip(order_ids, await self._store.get_many(order_ids), strict=True):
            if found is None:
                continue
            current, owner = found
            index = first_request[order_id]
            principal = requests[index][1].principal
            if current.status is not OrderStatus.PENDING or not may_see(principal, owner):
                continue
            changed, event = self._next_version(current, owner, requests[index][1], status=OrderStatus.CONFIRMED)
            assert event is not None
            changes.append((changed, current.version, event))
            changed_request.append(index)
        stored = await self._store.replace_many_if_version(changes)
        for index, was_stored in zip(changed_request, stored, strict=True):
            raw_id, ctx = requests[index]
            confirmed[index] = was_stored or await self.confirm(raw_id, ctx=ctx)
        return confirmed

    def _next_version(self, current: Order, owner: str, ctx: RequestContext, **fields: Any) -> Change:
        """The order with `fields` changed and its version bumped, and the event that says so."""
        changed = msgspec.structs.replace(current, version=current.version + 1, updated_at=self._clock.now(), **fields)
        return changed, self._event(EventType.UPDATED, changed, owner, ctx)

    async def _apply_change(
        self, order_id: str, principal: Principal, decide_for: Callable[[str], Decide]
    ) -> tuple[Order, bool]:
        """Apply `decide` to the order: optimistically first (read, then write if the version is
        still the one read), again so once it loses a race, and under the row lock after that.

        Returns the resulting order and whether it changed. Concurrent writers therefore never
        lose one another's updates, and every one of them makes progress. The second optimistic
        try is there because a lost race is usually against one other writer: its read and
        write join the batches of the calls around it, where the locked path is a transaction of
        four round trips of its own. An order's owner never changes, so the rule made for the
        owner read first holds for every later try.
        """
        parsed = parsed_or_not_found(order_id)
        current, owner = await self._read(order_id, principal)
        decide = decide_for(owner)
        for attempt in range(_OPTIMISTIC_TRIES):
            if attempt:
                current, _ = await self._read(order_id, principal)
            changed, event = decide(current)
            if event is None:
                return changed, False
            if await self._store.replace_if_version(changed, current.version, event) is not None:
                return changed, True
        outcome = await self._store.change_locked(parsed, decide)
        if outcome is None:
            raise OrderNotFound(order_id)
        return outcome

    async def watch(
        self, order_ids: Sequence[str], after: str | None, *, ctx: RequestContext = NO_CONTEXT
    ) -> ChangeSubscription:
        """Follow the changes of `order_ids` (empty: every order the caller may see) after the
        cursor `after` (None: from now).

        Ids must be well formed and, when not resuming, name existing orders (resuming, an order
        may have been deleted since the cursor: its deletion is among the changes to come). A
        cursor older than the feed still holds is CursorExpired, never a silent gap.
        """
        authorize("watch", ctx.principal)
        violations: list[FieldViolation] = []
        if len(order_ids) > MAX_WATCHED_ORDERS:
            violations.append(FieldViolation("order_id", f"at most {MAX_WATCHED_ORDERS} order ids"))
        ids: dict[str, uuid.UUID] = {}
        for raw in order_ids[: MAX_WATCHED_ORDERS + 1]:
            parsed = parse_order_id(raw)
            if parsed is None:
                violations.append(FieldViolation("order_id", f"{raw[:40]!r} is not an order id"))
            else:
                ids[str(parsed)] = parsed
        position = None
        if after is not None:
            position = parse_change_cursor(after)
            if position is None:
                violations.append(FieldViolation("after", "is not a change cursor (<milliseconds>-<sequence>)"))
        if violations:
            raise ValidationFailed(violations)
        if self._changes is None:
            raise ChangesUnavailable("this process has no change feed")
        if ids and position is None:
            found = await asyncio.gather(*(self._store.get(parsed) for parsed in ids.values()))
            missing = [
                text
                for text, order in zip(ids, found, strict=True)
                if order is None or not may_see(ctx.principal, order[1])  # another owner's: as if absent
            ]
            if missing:
                raise ValidationFailed([FieldViolation("order_id", f"order {missing[0]} not found")])
        spec = WatchSpec(
            frozenset(ids) or None,
            None if sees_every_owner(ctx) else (lambda owner: may_watch(owner, ctx)),
        )
        subscription = await self._changes.subscribe(after if position is not None else None, spec)
        if after is not None and position is not None:
            try:
                check_resume(after, position, await self._changes.bounds())
            except BaseException:
                subscription.close()
                raise
        return subscription

    async def purge_expired_idempotency_keys(self, batch_size: int = 1000) -> int:
        return await self._store.purge_expired_claims(self._clock.now(), batch_size)
