"""Creates with an idempotency key (PostgreSQL): the order, its event and the key in one statement,
and the keyed creates of one loop turn together in one statement as well.

A live key blocks its insert (ON CONFLICT ... WHERE false); an expired one is taken over. A
concurrent first request with the same key holds the unique-index entry until it commits, so the
statement waits for it and then sees its outcome. Keys are per owner. In a batch, the keys are
inserted in (owner, key) order (two batches never wait for each other's keys in opposite orders:
no deadlock), a key repeated in one batch goes after it on its own (it will find the first one's
claim), and the creates whose key was already held read those claims with one more statement.
"""

from __future__ import annotations

from typing import Any

import msgspec

from native import parse_uuid
from service.domain import IdempotencyClaim, Order, OrderEvent
from service.ports import ExistingClaim
from service.store.database import Database

_CREATE_WITH_KEY = """
WITH claim AS (
    INSERT INTO idempotency_keys (owner, key, fingerprint, order_id, response, expires_at)
    VALUES ($14, $16, $17, $1, $10::text::jsonb, $18)
    ON CONFLICT (owner, key) DO UPDATE
        SET fingerprint = EXCLUDED.fingerprint, order_id = EXCLUDED.order_id,
            response = EXCLUDED.response, created_at = now(), expires_at = EXCLUDED.expires_at
        WHERE idempotency_keys.expires_at <= $6
    RETURNING order_id
), new_order AS (
    INSERT INTO orders (id, product, quantity, status, version, created_at, updated_at, owner) SELECT $1, $2, $3, $4, $5, $6, $7, $14 FROM claim
    RETURNING id
), new_event AS (
    INSERT INTO outbox (event_id, event_type, order_id, payload, request_id, traceparent, occurred_at, owner, actor)
    SELECT $8, $9, $1, $10::text::jsonb, $11, $12, $13, $14, $15 FROM new_order
)
SELECT count(*) FROM claim
"""

_CREATE_MANY_WITH_KEYS = """
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::integer[], $4::text[], $5::bigint[], $6::timestamptz[],
                         $7::timestamptz[], $8::uuid[], $9::text[], $10::text[], $11::text[], $12::text[],
                         $13::timestamptz[], $14::text[], $15::text[], $16::text[], $17::text[], $18::timestamptz[])
        AS u(id, product, quantity, status, version, created_at, updated_at, event_id, event_type, payload,
             request_id, traceparent, occurred_at, owner, actor, key, fingerprint, expires_at)
), claim AS (
    INSERT INTO idempotency_keys (owner, key, fingerprint, order_id, response, created_at, expires_at)
    SELECT owner, key, decode(fingerprint, 'hex'), id, payload::jsonb, created_at, expires_at FROM input
    ORDER BY owner, key
    ON CONFLICT (owner, key) DO UPDATE
        SET fingerprint = EXCLUDED.fingerprint, order_id = EXCLUDED.order_id,
            response = EXCLUDED.response, created_at = now(), expires_at = EXCLUDED.expires_at
        WHERE idempotency_keys.expires_at <= EXCLUDED.created_at
    RETURNING order_id
), new_orders AS (
    INSERT INTO orders (id, product, quantity, status, version, created_at, updated_at, owner)
    SELECT id, product, quantity, status, version, created_at, updated_at, owner FROM input
    WHERE id IN (SELECT order_id FROM claim)
), new_events AS (
    INSERT INTO outbox (event_id, event_type, order_id, payload, request_id, traceparent, occurred_at, owner, actor)
    SELECT event_id, event_type, id, payload::jsonb, request_id, traceparent, occurred_at, owner, actor FROM input
    WHERE id IN (SELECT order_id FROM claim)
)
SELECT order_id FROM claim
"""

_EXISTING_CLAIM = """
SELECT fingerprint, response::text FROM idempotency_keys WHERE owner = $3 AND key = $1 AND expires_at > $2
"""

_EXISTING_CLAIMS = """
SELECT k.owner, k.key, k.fingerprint, k.response::text
FROM idempotency_keys k
WHERE k.owner = ANY($1::text[]) AND k.key = ANY($2::text[]) AND k.expires_at > $3
    AND (k.owner, k.key) IN (SELECT * FROM unnest($1::text[], $2::text[]))
"""

_decode_order = msgspec.json.Decoder(Order).decode

KeyedCreate = tuple[Order, OrderEvent, IdempotencyClaim, list[Any]]
"""A create, its event (naming the owner, whose keys are its own), its claim, and the parameters
$1..$15 of its order and event."""


def _existing(fingerprint: bytes, response: str) -> ExistingClaim:
    return ExistingClaim(fingerprint=bytes(fingerprint), order=_decode_order(response))


async def create_keyed(db: Database, create: KeyedCreate) -> Order | ExistingClaim:
    """One keyed create on its own: the stored order, or the live claim that holds its key."""
    order, event, claim, params = create
    # Two rounds at most: a live key can expire and be purged between the two statements.
    for _ in range(2):
        rows = await db.fetch(_CREATE_WITH_KEY, [*params, claim.key, claim.fingerprint, claim.expires_at])
        if rows[0][0] == 1:
            return order
        existing = await db.fetch(_EXISTING_CLAIM, [claim.key, order.created_at, event.owner])
        if existing:
            return _existing(*existing[0])
    raise RuntimeError("idempotency key neither claimable nor readable")


async def create_keyed_many(db: Database, batch: list[KeyedCreate]) -> list[Order | ExistingClaim]:
    """The keyed creates of one loop turn: one statement for the lot, one more for held keys."""
    if len(batch) == 1:
        return [await create_keyed(db, batch[0])]
    first: dict[tuple[str, str], int] = {}
    repeated: list[int] = []
    for index, (_, event, claim, _) in enumerate(batch):
        if (event.owner, claim.key) in first:
            repeated.append(index)
        else:
            first[(event.owner, claim.key)] = index
    ordered = [first[owner_key] for owner_key in sorted(first)]
    columns: list[list[Any]] = [[] for _ in range(18)]
    for index in ordered:
        _, _, claim, params = batch[index]
        # Fingerprints go as hex text: psqlpy does not send a list of bytes as bytea[].
        for column, value in zip(columns, [*params, claim.key, claim.fingerprint.hex(), claim.expires_at], strict=True):
            column.append(value)
    claimed = {parse_uuid(row[0]) for row in await db.fetch(_CREATE_MANY_WITH_KEYS, columns)}
    results: list[Order | ExistingClaim | None] = [None] * len(batch)
    held: list[int] = []
    for index in ordered:
        order = batch[index][0]
        if order.id in claimed:
            results[index] = order
        else:
            held.append(index)
    if held:
        now = min(batch[index][0].created_at for index in held)
        owners = [batch[index][1].owner for index in held]
        keys = [batch[index][2].key for index in held]
        rows = await db.fetch(_EXISTING_CLAIMS, [owners, keys, now])
        claims = {(owner, key): _existing(fingerprint, response) for owner, key, fingerprint, response in rows}
        for index in held:
            found = claims.get((batch[index][1].owner, batch[index][2].key))
            results[index] = found if found is not None else await create_keyed(db, batch[index])
    for index in repeated:
        results[index] = await create_keyed(db, batch[index])
    return [result for result in results if result is not None]
