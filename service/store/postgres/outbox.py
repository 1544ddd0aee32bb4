"""The PostgreSQL outbox (psqlpy): the relay's dedicated sessions, its advisory lock, and the backlog.

The rows themselves are written by the order store, in the statement of each order change.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psqlpy
from psqlpy import exceptions as pg_errors

from service.domain import StoreUnavailable
from service.ports import OutboxBacklog, OutboxRecord
from service.store.database import Database, is_unavailable, tls_options, with_session_settings

_OUTBOX_CLAIM = """
SELECT id, event_id, event_type, order_id, payload::text, request_id, traceparent, occurred_at, owner, actor
FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1
"""

_OUTBOX_MARK = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[]) AND published_at IS NULL"
_OUTBOX_DELETE = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"

# Rows published more than the retention ago, oldest first, a batch at a time (outbox_published_idx).
_OUTBOX_PURGE = """
WITH doomed AS (
    SELECT id FROM outbox WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)
    ORDER BY published_at LIMIT $2
), purged AS (
    DELETE FROM outbox o USING doomed WHERE o.id = doomed.id RETURNING 1
)
SELECT count(*) FROM purged
"""

# Three index probes at the ends of the partial index, whatever the table's size: the backlog is
# the span of unpublished ids (exact unless rolled-back writes skipped some ids), its age the
# oldest one's. A count(*) would read every unpublished row on each scrape.
_OUTBOX_BACKLOG = """
SELECT lo.id, hi.id, extract(epoch FROM now() - lo.created_at)::float8
FROM (SELECT id, created_at FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 1) lo,
     (SELECT id FROM outbox WHERE published_at IS NULL ORDER BY id DESC LIMIT 1) hi
"""

# One relay per outbox table: the key names this table (its OID), so schemas or databases that
# share a server do not block one another's relays.
_RELAY_LOCK_CLASS = 0x6F726472  # "ordr"
_OUTBOX_TRY_LOCK = "SELECT pg_try_advisory_lock($1, 'outbox'::regclass::oid::integer)"

OUTBOX_CHANNEL = "orders_outbox"


def _pg_failure(exc: BaseException) -> BaseException:
    if isinstance(exc, pg_errors.Error) and is_unavailable(exc):
        return StoreUnavailable(f"database unavailable: {exc}")
    return exc


class PostgresRelaySession:
    """A dedicated PostgreSQL session of the relay: it holds the relay's advisory lock and does the
    relay's reads and marks, so the lock is held exactly while this session's queries can succeed.
    """

    def __init__(self, conn: psqlpy.Connection, dsn: str, application_name: str, *, keep_published: bool) -> None:
        self._conn = conn
        self._finish_sql = _OUTBOX_MARK if keep_published else _OUTBOX_DELETE
        self._dsn = dsn
        self._application_name = application_name
        self._listener_pool: psqlpy.ConnectionPool | None = None
        self._listener: psqlpy.Listener | None = None

    async def _execute(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        try:
            result = await self._conn.execute(sql, params)
        except pg_errors.Error as exc:
            raise _pg_failure(exc) from exc
        rows: list[tuple[Any, ...]] = result.result(as_tuple=True)
        return rows

    async def try_lock(self) -> bool:
        """Become the active relay if none is: a session-level lock, released when this session ends."""
        rows = await self._execute(_OUTBOX_TRY_LOCK, [_RELAY_LOCK_CLASS])
        return bool(rows[0][0])

    async def claim_batch(self, limit: int) -> list[OutboxRecord]:
        """Up to `limit` unpublished rows, oldest first (outbox id order)."""
        rows = await self._execute(_OUTBOX_CLAIM, [limit])
        return [
            OutboxRecord(
                id=row[0],
                event_id=str(row[1]),
                event_type=row[2],
                order_id=str(row[3]),
                payload=row[4],
                request_id=row[5],
                traceparent=row[6],
                occurred_at=row[7],
                owner=row[8],
                actor=row[9],
            )
            for row in rows
        ]

    async def mark_published(self, ids: list[int]) -> None:
        """Marked (kept for the retention) or, with no retention, deleted."""
        await self._execute(self._finish_sql, [ids])

    async def listen(self, on_notify: Callable[[], None]) -> None:
        """Call `on_notify` whenever rows are inserted into the outbox (LISTEN orders_outbox).

        Best effort: a listener whose connection dies goes silent, so callers also poll.
        """

        async def callback(connection: psqlpy.Connection, payload: str, channel: str, process_id: int) -> None:
            on_notify()

        try:
            dsn, tls = tls_options(self._dsn)
            self._listener_pool = psqlpy.ConnectionPool(
                dsn=dsn,
                **tls,
                max_db_pool_size=2,
                connect_timeout_sec=3,
                application_name=f"{self._application_name}-listen",
            )
            self._listener = self._listener_pool.listener()
            await self._listener.add_callback(channel=OUTBOX_CHANNEL, callback=callback)
            await self._listener.startup()
            self._listener.listen()
        except pg_errors.Error as exc:
            raise _pg_failure(exc) from exc

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.abort_listen()
                await listener.shutdown()
        pool, self._listener_pool = self._listener_pool, None
        if pool is not None:
            pool.close()
        self._conn.close()


class PostgresOutbox:
    """The outbox table: the relay's dedicated sessions, the purge of published rows, the backlog.

    `retention` (seconds): how long published rows are kept; 0 deletes each batch once published.
    """

    def __init__(
        self, db: Database, dsn: str, application_name: str = "orders-service-relay", *, retention: float = 0.0
    ) -> None:
        self._db = db
        self._dsn = dsn
        self._application_name = application_name
        self._retention = retention

    @asynccontextmanager
    async def relay_session(self) -> AsyncIterator[PostgresRelaySession]:
        try:
            dsn, tls = tls_options(self._dsn)
            conn = await psqlpy.connect(
                dsn=with_session_settings(dsn, 0.0, custom_plans=True, index_order=True),  # see there
                **tls,
                connect_timeout_sec=3,
                application_name=self._application_name,
            )
        except pg_errors.Error as exc:
            raise _pg_failure(exc) from exc
        session = PostgresRelaySession(conn, self._dsn, self._application_name, keep_published=self._retention > 0)
        try:
            yield session
        finally:
            await session.close()

    async def purge_published(self, limit: int) -> int:
        """Delete up to `limit` rows published more than the retention ago; returns how many."""
        rows = await self._db.fetch(_OUTBOX_PURGE, [float(self._retention), limit])
        return int(rows[0][0])

    async def backlog(self) -> OutboxBacklog:
        rows = await self._db.fetch(_OUTBOX_BACKLOG)
        if not rows:
            return OutboxBacklog(unpublished=0, oldest_age_seconds=None)
        lowest, highest, age = rows[0]
        return OutboxBacklog(unpublished=int(highest) - int(lowest) + 1, oldest_age_seconds=max(0.0, float(age)))
