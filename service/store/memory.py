"""In-memory OrderStore: the fake for unit tests and micro-benchmarks. Same contract as postgres.

Every change records its event in `outbox` and, when the store was given a MemoryOutbox, adds it
there too (as the PostgreSQL store writes its outbox row), so a relay on that outbox sees it.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from service.domain import IdempotencyClaim, Order, OrderEvent, OrderStatus
from service.ports import Decide, DecideRemoval, ExistingClaim
from service.store.memory_outbox import MemoryOutbox


class _StoredClaim(msgspec.Struct, frozen=True):
    claim: IdempotencyClaim
    order: Order


class MemoryOrderStore:
    def __init__(self, relay_outbox: MemoryOutbox | None = None) -> None:
        self.orders: dict[uuid.UUID, Order] = {}
        self.owners: dict[uuid.UUID, str] = {}
        self.outbox: list[OrderEvent] = []
        self.claims: dict[tuple[str, str], _StoredClaim] = {}  # by (owner, key)
        self.now: datetime | None = None  # what "now" is for claim expiry; set by tests
        self._relay_outbox = relay_outbox

    def _record(self, event: OrderEvent) -> None:
        self.outbox.append(event)
        if self._relay_outbox is not None:
            self._relay_outbox.add(event)

    def _live_claim(self, key: tuple[str, str], at: datetime) -> _StoredClaim | None:
        stored = self.claims.get(key)
        if stored is None or stored.claim.expires_at <= at:
            return None
        return stored

    async def create(self, order: Order, event: OrderEvent, claim: IdempotencyClaim | None) -> Order | ExistingClaim:
        if claim is not None:
            key = (event.owner, claim.key)
            existing = self._live_claim(key, self.now or order.created_at)
            if existing is not None:
                return ExistingClaim(fingerprint=existing.claim.fingerprint, order=existing.order)
            self.claims[key] = _StoredClaim(claim, order)
        self.orders[order.id] = order
        self.owners[order.id] = event.owner
        self._record(event)
        return order

    async def get(self, order_id: uuid.UUID) -> tuple[Order, str] | None:
        order = self.orders.get(order_id)
        return None if order is None else (order, self.owners[order_id])

    async def get_many(self, order_ids: list[uuid.UUID]) -> list[tuple[Order, str] | None]:
        return [await self.get(order_id) for order_id in order_ids]

    async def list_page(
        self, limit: int, before_id: uuid.UUID | None, status: OrderStatus | None, owner: str | None
    ) -> list[Order]:
        selected = [
            o
            for o in self.orders.values()
            if (before_id is None or o.id < before_id)
            and (status is None or o.status == status)
            and (owner is None or self.owners[o.id] == owner)
        ]
        selected.sort(key=lambda o: o.id, reverse=True)
        return selected[:limit]

    async def replace_if_version(self, order: Order, expected_version: int, event: OrderEvent) -> Order | None:
        current = self.orders.get(order.id)
        if current is None or current.version != expected_version:
            return None
        self.orders[order.id] = order
        self._record(event)
        return order

    async def replace_many_if_version(self, changes: list[tuple[Order, int, OrderEvent]]) -> list[bool]:
        return [await self.replace_if_version(*change) is not None for change in changes]

    async def delete_if_version(self, order_id: uuid.UUID, expected_version: int, event: OrderEvent) -> bool:
        current = self.orders.get(order_id)
        if current is None or current.version != expected_version:
            return False
        del self.orders[order_id]
        del self.owners[order_id]
        self._record(event)
        return True

    async def change_locked(self, order_id: uuid.UUID, decide: Decide) -> tuple[Order, bool] | None:
        current = self.orders.get(order_id)
        if current is None:
            return None
        changed, event = decide(current)
        if event is None:
            return changed, False
        self.orders[order_id] = changed
        self._record(event)
        return changed, True

    async def delete_locked(self, order_id: uuid.UUID, decide: DecideRemoval) -> bool:
        current = self.orders.get(order_id)
        if current is None:
            return False
        event = decide(current)
        del self.orders[order_id]
        del self.owners[order_id]
        self._record(event)
        return True

    async def purge_expired_claims(self, now: datetime, limit: int) -> int:
        expired = [k for k, v in self.claims.items() if v.claim.expires_at <= now][:limit]
        for key in expired:
            del self.claims[key]
        return len(expired)
