"""PostgreSQL OrderStore (psqlpy). The only module with the service's order SQL.

Every change is one statement: the order row and its outbox event (and idempotency key) are
written together by data-modifying CTEs, so they commit or fail as one.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from service.domain import IdempotencyClaim, Order, OrderEvent, OrderStatus
from service.ports import Decide, DecideRemoval, ExistingClaim
from service.store.database import Database

_CREATE = """
WITH new_order AS (
    INSERT INTO orders (id, product, quantity, status, version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
)
INSERT INTO outbox (event_id, event_type, order_id, payload, request_id, traceparent, occurred_at) VALUES ($8, $9, $1, $10::text::jsonb, $11, $12, $13)
"""

# A live key blocks the insert (ON CONFLICT ... WHERE false); an expired one is taken over.
# A concurrent first request with the same key holds the unique-index entry until it commits,
# so this statement waits for it and then sees its outcome.
_CREATE_WITH_KEY = """
WITH claim AS (
    INSERT INTO idempotency_keys (key, fingerprint, order_id, response, expires_at)
    VALUES ($14, $15, $1, $10::text::jsonb, $16)
    ON CONFLICT (key) DO UPDATE
        SET fingerprint = EXCLUDED.fingerprint, order_id = EXCLUDED.order_id,
            response = EXCLUDED.response, created_at = now(), expires_at = EXCLUDED.expires_at
        WHERE idempotency_keys.expires_at <= $6
    RETURNING order_id
), new_order AS (
    INSERT INTO orders (id, product, quantity, status, version, created_at, updated_at) SELECT $1, $2, $3, $4, $5, $6, $7 FROM claim
    RETURNING id
), new_event AS (
    INSERT INTO outbox (event_id, event_type, order_id, payload, request_id, traceparent, occurred_at)
    SELECT $8, $9, $1, $10::text::jsonb, $11, $12, $13 FROM new_order
)
SELECT count(*) FROM claim
"""

_EXISTING_CLAIM = """
SELECT fingerprint, response::text FROM idempotency_keys WHERE key = $1 AND expires_at > $2
"""

_GET_FOR_UPDATE = (
    "SELECT id, product, quantity, status, version, created_at, updated_at FROM orders WHERE id = $1 FOR UPDATE"
)

_GET = "SELECT id, product, quantity, status, version, created_at, updated_at FROM orders WHERE id = $1"

_LIST_FIRST = (
    "SELECT id, product, quantity, status, version, created_at, updated_at FROM orders ORDER BY id DESC LIMIT $1"
)
_LIST_AFTER = "SELECT id, product, quantity, status, version, created_at, updated_at FROM orders WHERE id < $2 ORDER BY id DESC LIMIT $1"
_LIST_STATUS_FIRST = "SELECT id, product, quantity, status, version, created_at, updated_at FROM orders WHERE status = $2 ORDER BY id DESC LIMIT $1"
_LIST_STATUS_AFTER = "SELECT id, product, quantity, status, version, created_at, updated_at FROM orders WHERE status = $2 AND id < $3 ORDER BY id DESC LIMIT $1"

_UPDATE = """
WITH changed AS (
    UPDATE orders SET product = $2, quantity = $3, status = $4, version = $5, updated_at = $6
    WHERE id = $1 AND version = $7
    RETURNING id
), new_event AS (
    INSERT INTO outbox (event_id, event_type, order_id, payload, request_id, traceparent, occurred_at)
    SELECT $8, $9, $1, $10::text::jsonb, $11, $12, $13 FROM changed
)
SELECT count(*) FROM changed
"""

_DELETE = """
WITH gone AS (
    DELETE FROM orders WHERE id = $1 AND version = $2 RETURNING id
), new_event AS (
    INSERT INTO outbox (event_id, event_type, order_id, payload, request_id, traceparent, occurred_at)
    SELECT $3, $4, $1, $5::text::jsonb, $6, $7, $8 FROM gone
)
SELECT count(*) FROM gone
"""

_PURGE_CLAIMS = """
WITH doomed AS (
    SELECT key FROM idempotency_keys WHERE expires_at <= $1
    ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
), purged AS (
    DELETE FROM idempotency_keys k USING doomed WHERE k.key = doomed.key RETURNING 1
)
SELECT count(*) FROM purged
"""

_encode_json = msgspec.json.Encoder().encode
_decode_order = msgspec.json.Decoder(Order).decode


def _row_to_order(row: tuple[Any, ...]) -> Order:
    return Order(
        id=uuid.UUID(row[0]),
        product=row[1],
        quantity=row[2],
        status=OrderStatus(row[3]),
        version=row[4],
        created_at=row[5],
        updated_at=row[6],
    )


def _event_params(event: OrderEvent) -> list[Any]:
    return [
        event.id,
        event.type.value,
        _encode_json(event.order).decode(),
        event.request_id,
        event.traceparent,
        event.occurred_at,
    ]


def _update_params(order: Order, expected_version: int, event: OrderEvent) -> list[Any]:
    return [
        order.id,
        order.product,
        order.quantity,
        order.status.value,
        order.version,
        order.updated_at,
        expected_version,
        *_event_params(event),
    ]


class PostgresOrderStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, order: Order, event: OrderEvent, claim: IdempotencyClaim | None) -> Order | ExistingClaim:
        event_id, event_type, payload, request_id, traceparent, occurred_at = _event_params(event)
        params: list[Any] = [
            order.id,
            order.product,
            order.quantity,
            order.status.value,
            order.version,
            order.created_at,
            order.updated_at,
            event_id,
            event_type,
            payload,
            request_id,
            traceparent,
            occurred_at,
        ]
        if claim is None:
            await self._db.fetch(_CREATE, params)
            return order
        params += [claim.key, claim.fingerprint, claim.expires_at]
        # Two rounds at most: a live key can expire and be purged between the two statements.
        for _ in range(2):
            rows = await self._db.fetch(_CREATE_WITH_KEY, params)
            if rows[0][0] == 1:
                return order
            existing = await self._db.fetch(_EXISTING_CLAIM, [claim.key, order.created_at])
            if existing:
                fingerprint, response = existing[0]
                return ExistingClaim(fingerprint=bytes(fingerprint), order=_decode_order(response))
        raise RuntimeError("idempotency key neither claimable nor readable")

    async def get(self, order_id: uuid.UUID) -> Order | None:
        rows = await self._db.fetch(_GET, [order_id])
        return _row_to_order(rows[0]) if rows else None

    async def list_page(self, limit: int, before_id: uuid.UUID | None, status: OrderStatus | None) -> list[Order]:
        if status is None:
            if before_id is None:
                rows = await self._db.fetch(_LIST_FIRST, [limit])
            else:
                rows = await self._db.fetch(_LIST_AFTER, [limit, before_id])
        elif before_id is None:
            rows = await self._db.fetch(_LIST_STATUS_FIRST, [limit, status.value])
        else:
            rows = await self._db.fetch(_LIST_STATUS_AFTER, [limit, status.value, before_id])
        return [_row_to_order(row) for row in rows]

    async def update(self, order: Order, expected_version: int, event: OrderEvent) -> Order | None:
        rows = await self._db.fetch(_UPDATE, _update_params(order, expected_version, event))
        return order if rows[0][0] == 1 else None

    async def delete(self, order_id: uuid.UUID, expected_version: int, event: OrderEvent) -> bool:
        rows = await self._db.fetch(_DELETE, [order_id, expected_version, *_event_params(event)])
        return bool(rows[0][0] == 1)

    async def modify(self, order_id: uuid.UUID, decide: Decide) -> tuple[Order, bool] | None:
        async with self._db.transaction() as tx:
            rows = (await tx.execute(_GET_FOR_UPDATE, [order_id])).result(as_tuple=True)
            if not rows:
                return None
            current = _row_to_order(rows[0])
            changed, event = decide(current)
            if event is None:
                return changed, False
            await tx.execute(_UPDATE, _update_params(changed, current.version, event))
            return changed, True

    async def remove(self, order_id: uuid.UUID, decide: DecideRemoval) -> bool:
        async with self._db.transaction() as tx:
            rows = (await tx.execute(_GET_FOR_UPDATE, [order_id])).result(as_tuple=True)
            if not rows:
                return False
            current = _row_to_order(rows[0])
            event = decide(current)
            await tx.execute(_DELETE, [order_id, current.version, *_event_params(event)])
            return True

    async def purge_expired_claims(self, now: datetime, limit: int) -> int:
        rows = await self._db.fetch(_PURGE_CLAIMS, [now, limit])
        return int(rows[0][0])
