"""In-memory OrderStore: the fake for unit tests and micro-benchmarks. Same contract as postgres."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from service.domain import IdempotencyClaim, Order, OrderEvent, OrderStatus
from service.ports import Decide, DecideRemoval, ExistingClaim


class _StoredClaim(msgspec.Struct, frozen=True):
    claim: IdempotencyClaim
    order: Order


class MemoryOrderStore:
    def __init__(self) -> None:
        self.orders: dict[uuid.UUID, Order] = {}
        self.outbox: list[OrderEvent] = []
        self.claims: dict[str, _StoredClaim] = {}
        self.now: datetime | None = None  # what "now" is for claim expiry; set by tests

    def _live_claim(self, key: str, at: datetime) -> _StoredClaim | None:
        stored = self.claims.get(key)
        if stored is None or stored.claim.expires_at <= at:
            return None
        return stored

    async def create(self, order: Order, event: OrderEvent, claim: IdempotencyClaim | None) -> Order | ExistingClaim:
        if claim is not None:
            existing = self._live_claim(claim.key, self.now or order.created_at)
            if existing is not None:
                return ExistingClaim(fingerprint=existing.claim.fingerprint, order=existing.order)
            self.claims[claim.key] = _StoredClaim(claim, order)
        self.orders[order.id] = order
        self.outbox.append(event)
        return order

    async def get(self, order_id: uuid.UUID) -> Order | None:
        return self.orders.get(order_id)

    async def list_page(self, limit: int, before_id: uuid.UUID | None, status: OrderStatus | None) -> list[Order]:
        selected = [
            o
            for o in self.orders.values()
            if (before_id is None or o.id < before_id) and (status is None or o.status == status)
        ]
        selected.sort(key=lambda o: o.id, reverse=True)
        return selected[:limit]

    async def update(self, order: Order, expected_version: int, event: OrderEvent) -> Order | None:
        current = self.orders.get(order.id)
        if current is None or current.version != expected_version:
            return None
        self.orders[order.id] = order
        self.outbox.append(event)
        return order

    async def delete(self, order_id: uuid.UUID, expected_version: int, event: OrderEvent) -> bool:
        current = self.orders.get(order_id)
        if current is None or current.version != expected_version:
            return False
        del self.orders[order_id]
        self.outbox.append(event)
        return True

    async def modify(self, order_id: uuid.UUID, decide: Decide) -> tuple[Order, bool] | None:
        current = self.orders.get(order_id)
        if current is None:
            return None
        changed, event = decide(current)
        if event is None:
            return changed, False
        self.orders[order_id] = changed
        self.outbox.append(event)
        return changed, True

    async def remove(self, order_id: uuid.UUID, decide: DecideRemoval) -> bool:
        current = self.orders.get(order_id)
        if current is None:
            return False
        event = decide(current)
        del self.orders[order_id]
        self.outbox.append(event)
        return True

    async def purge_expired_claims(self, now: datetime, limit: int) -> int:
        expired = [k for k, v in self.claims.items() if v.claim.expires_at <= now][:limit]
        for key in expired:
            del self.claims[key]
        return len(expired)
