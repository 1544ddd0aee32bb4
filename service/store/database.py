"""The psqlpy pool of one process: bounded acquire, availability errors, pool figures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import psqlpy
from psqlpy import exceptions as pg_errors

from service.domain import StoreUnavailable

# psqlpy reports every failure as text only; these fragments mean "cannot talk to PostgreSQL",
# as opposed to a statement that PostgreSQL rejected.
_UNAVAILABLE_MARKERS = (
    "connection refused",
    "connection closed",
    "connection reset",
    "error connecting",
    "error communicating",
    "broken pipe",
    "timed out",
    "terminating connection",
    "the database system is",
    "no such file or directory",
    "unexpected eof",
    "connection to server",
)


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, pg_errors.BaseConnectionPoolError | pg_errors.ConnectionClosedError):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _UNAVAILABLE_MARKERS)


class PoolStats(msgspec.Struct, frozen=True):
    size: int
    max_size: int
    in_use: int
    idle: int
    waiting: int
    waits_total: int
    acquire_timeouts_total: int


class Database:
    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int,
        acquire_timeout: float,
        connect_timeout: int = 3,
        application_name: str = "orders-service",
    ) -> None:
        self._pool = psqlpy.ConnectionPool(
            dsn=dsn,
            max_db_pool_size=max(2, pool_size),
            connect_timeout_sec=connect_timeout,
            application_name=application_name,
        )
        self._acquire_timeout = acquire_timeout
        self.waits_total = 0
        self.acquire_timeouts_total = 0

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psqlpy.Connection]:
        """A pooled connection; StoreUnavailable when none comes within the acquire timeout."""
        if self._pool.status().available == 0:
            self.waits_total += 1
        try:
            conn = await asyncio.wait_for(self._pool.connection(), self._acquire_timeout)
        except TimeoutError:
            self.acquire_timeouts_total += 1
            raise StoreUnavailable("no database connection available in time") from None
        except pg_errors.Error as exc:
            if is_unavailable(exc):
                raise StoreUnavailable("database unreachable") from exc
            raise
        try:
            yield conn
        except pg_errors.Error as exc:
            if is_unavailable(exc):
                raise StoreUnavailable("database connection failed") from exc
            raise
        finally:
            conn.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psqlpy.Transaction]:
        """A transaction on a pooled connection: committed on success, rolled back on error."""
        async with self.connection() as conn, conn.transaction() as tx:
            yield tx

    async def fetch(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        async with self.connection() as conn:
            result = await conn.execute(sql, params)
        rows: list[tuple[Any, ...]] = result.result(as_tuple=True)
        return rows

    async def ping(self) -> None:
        await self.fetch("SELECT 1")

    def stats(self) -> PoolStats:
        status = self._pool.status()
        return PoolStats(
            size=status.size,
            max_size=status.max_size,
            in_use=status.size - status.available,
            idle=status.available,
            waiting=status.waiting,
            waits_total=self.waits_total,
            acquire_timeouts_total=self.acquire_timeouts_total,
        )

    def close(self) -> None:
        self._pool.close()
