"""TracedPostgresOrderStore: the PostgreSQL order store with a CLIENT span around each call."""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from datetime import datetime

from service.domain import IdempotencyClaim, Order, OrderEvent, OrderStatus
from service.observability.tracing import BATCH_SIZE, AttributeValue, Span, Tracer
from service.ports import Decide, DecideRemoval, ExistingClaim
from service.store.database import Database
from service.store.postgres.orders import PostgresOrderStore, create_params


def _db_span(operation: str, table: str) -> tuple[str, dict[str, AttributeValue]]:
    """Name and attributes of a database span: the operation and table, never the SQL parameters."""
    attributes: dict[str, AttributeValue] = {
        "db.system": "postgresql",
        "db.operation.name": operation,
        "db.collection.name": table,
    }
    return f"{operation} {table}", attributes


_SPAN_INSERT = _db_span("INSERT", "orders")
_SPAN_SELECT = _db_span("SELECT", "orders")
_SPAN_UPDATE = _db_span("UPDATE", "orders")
_SPAN_DELETE = _db_span("DELETE", "orders")
_SPAN_PURGE = _db_span("DELETE", "idempotency_keys")


class TracedPostgresOrderStore(PostgresOrderStore):
    """PostgresOrderStore with a CLIENT span around each call (used only when tracing is on).

    The span is the calling request's: a child of its server or consumer span, covering its wait
    for the statement. Calls coalesced into one statement (point reads, plain creates, conditional
    updates) each keep their own span, with `db.operation.batch.size` saying how many went in it.
    """

    def __init__(
        self, db: Database, tracer: Tracer, coalesce_max_batch: int = 256, coalesce_max_in_flight: int = 1
    ) -> None:
        super().__init__(db, coalesce_max_batch, coalesce_max_in_flight)
        self._tracer = tracer

    def _span(self, which: tuple[str, dict[str, AttributeValue]]) -> AbstractContextManager[Span]:
        return self._tracer.span(which[0], "client", attributes=which[1])

    async def create(self, order: Order, event: OrderEvent, claim: IdempotencyClaim | None) -> Order | ExistingClaim:
        with self._span(_SPAN_INSERT) as span:
            if claim is None:
                await self._creates.submit((order, event), span)
                return order
            span.set_attribute("orders.idempotency_key", True)
            return await self._keyed_creates.submit((order, event, claim, create_params(order, event)), span)

    async def get(self, order_id: uuid.UUID) -> tuple[Order, str] | None:
        with self._span(_SPAN_SELECT) as span:
            return await self._reads.submit(order_id, span)

    async def get_many(self, order_ids: list[uuid.UUID]) -> list[tuple[Order, str] | None]:
        with self._span(_SPAN_SELECT) as span:
            span.set_attribute(BATCH_SIZE, len(order_ids))
            return await super().get_many(order_ids)

    async def list_page(
        self, limit: int, before_id: uuid.UUID | None, status: OrderStatus | None, owner: str | None
    ) -> list[Order]:
        with self._span(_SPAN_SELECT):
            return await super().list_page(limit, before_id, status, owner)

    async def replace_if_version(self, order: Order, expected_version: int, event: OrderEvent) -> Order | None:
        with self._span(_SPAN_UPDATE) as span:
            return order if await self._updates.submit((order, expected_version, event), span) else None

    async def replace_many_if_version(self, changes: list[tuple[Order, int, OrderEvent]]) -> list[bool]:
        with self._span(_SPAN_UPDATE) as span:
            span.set_attribute(BATCH_SIZE, len(changes))
            return await super().replace_many_if_version(changes)

    async def delete_if_version(self, order_id: uuid.UUID, expected_version: int, event: OrderEvent) -> bool:
        with self._span(_SPAN_DELETE):
            return await super().delete_if_version(order_id, expected_version, event)

    async def change_locked(self, order_id: uuid.UUID, decide: Decide) -> tuple[Order, bool] | None:
        with self._span(_SPAN_UPDATE) as span:
            span.set_attribute("orders.row_lock", True)  # SELECT ... FOR UPDATE, then UPDATE, one transaction
            return await super().change_locked(order_id, decide)

    async def delete_locked(self, order_id: uuid.UUID, decide: DecideRemoval) -> bool:
        with self._span(_SPAN_DELETE) as span:
            span.set_attribute("orders.row_lock", True)
            return await super().delete_locked(order_id, decide)

    async def purge_expired_claims(self, now: datetime, limit: int) -> int:
        with self._span(_SPAN_PURGE):
            return await super().purge_expired_claims(now, limit)
