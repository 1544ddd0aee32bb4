"""The psqlpy pool of one process: bounded acquire, availability errors, pool figures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import psqlpy
from psqlpy import exceptions as pg_errors

from service.domain import StoreOverloaded, StoreUnavailable
from service.ports import PoolStats

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
    "statement timeout",
)


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, pg_errors.BaseConnectionPoolError | pg_errors.ConnectionClosedError):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _UNAVAILABLE_MARKERS)


def with_session_settings(
    dsn: str, statement_timeout: float, *, custom_plans: bool = False, index_order: bool = False
) -> str:
    """The DSN with the service's session settings added to its `options` (kept: any it had).

    - `statement_timeout` (seconds; 0: none): PostgreSQL cancels a statement that runs (or waits
      for a lock) longer, so a request that holds a pooled connection cannot wait forever either.
    - How statements are planned. They are prepared once per connection, and PostgreSQL switches
      one to a generic plan after five runs and keeps it until the table's statistics change
      (ANALYZE). A generic plan made while a table was small reads the whole table at every run
      from then on, wherever ANALYZE does not come soon (autovacuum off, as on this project's
      benchmark machine, or a table growing faster than it runs): the point read of orders did,
      and with it every GET, after the first minute of a benchmark.
      - Request sessions (default): `enable_seqscan=off`. Every statement of the request path is
        a point, batch or keyset read or write through an index; with sequential scans priced
        out, a plan cached at any table size keeps to those indexes, and nothing is planned twice.
      - `custom_plans` (the worker role, a few batched statements a second, some on tables that
        are small for good, like the outbox): `plan_cache_mode=force_custom_plan`, each statement
        planned with its parameters and the table as it is.
      tests/integration/test_generic_plans.py holds both.
    - `index_order` (the relay's session): `enable_bitmapscan=off`. The relay reads the oldest
      unpublished outbox rows a batch at a time; through the partial index in id order that read
      stops after the batch. A custom plan made with the outbox never analyzed took a bitmap scan
      of every unpublished row and a sort instead: 34-69 ms for a 500-row batch at a 26,000-34,000
      row backlog against 0.9 ms in index order, and 5.8 ms per read on average over a POST
      benchmark run (pg_stat_statements): a third of the time of the pipeline's statements.
    """
    settings = ["-c plan_cache_mode=force_custom_plan"] if custom_plans else ["-c enable_seqscan=off"]
    if index_order:
        settings.append("-c enable_bitmapscan=off")
    if statement_timeout > 0:
        settings.append(f"-c statement_timeout={max(1, round(statement_timeout * 1000))}")
    parts = urlsplit(dsn)
    params = parse_qsl(parts.query, keep_blank_values=True)
    options = [value for name, value in params if name == "options"]
    others = [(name, value) for name, value in params if name != "options"]
    merged = " ".join([*options, *settings])
    pairs = [*others, ("options", merged)]
    query = "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in pairs)
    return urlunsplit(parts._replace(query=query))


# libpq's sslmode values as psqlpy's. psqlpy (its tokio-postgres fork) falls back to plaintext
# when the server declines TLS in every mode but Require, VerifyCa and VerifyFull included, so the
# verify-* modes are Require with the sslrootcert CA: psqlpy then checks the certificate's chain
# and its host name (there is no way to ask it for the chain only, so verify-ca checks the host
# name too). Require without a CA encrypts without checking the certificate (libpq's require).
_SSL_MODES = {
    "disable": psqlpy.SslMode.Disable,
    "allow": psqlpy.SslMode.Allow,
    "prefer": psqlpy.SslMode.Prefer,
    "require": psqlpy.SslMode.Require,
    "verify-ca": psqlpy.SslMode.Require,
    "verify-full": psqlpy.SslMode.Require,
}
VERIFYING_SSL_MODES = ("verify-ca", "verify-full")


def tls_options(dsn: str) -> tuple[str, dict[str, Any]]:
    """The DSN without `sslmode`/`sslrootcert`, and them as psqlpy's `ssl_mode`/`ca_file` arguments.

    psqlpy's own DSN parsing refuses `sslrootcert` and silently connects in plaintext with
    `sslmode=verify-ca` or `verify-full`, so both are taken out and passed explicitly. A mode libpq
    does not know is a ValueError, and so is a verify-* mode without `sslrootcert`: psqlpy would
    encrypt without checking anything (libpq would look for ~/.postgresql/root.crt; here the CA
    file is always named).
    """
    parts = urlsplit(dsn)
    params = parse_qsl(parts.query, keep_blank_values=True)
    options: dict[str, Any] = {}
    kept: list[tuple[str, str]] = []
    mode = None
    for name, value in params:
        if name == "sslmode":
            if value not in _SSL_MODES:
                raise ValueError(f"sslmode={value!r} must be one of {', '.join(_SSL_MODES)}")
            mode = value
            options["ssl_mode"] = _SSL_MODES[value]
        elif name == "sslrootcert":
            options["ca_file"] = value
        else:
            kept.append((name, value))
    if mode in VERIFYING_SSL_MODES and not options.get("ca_file"):
        raise ValueError(f"sslmode={mode} needs sslrootcert=<CA file> (the CA that issued the server's certificate)")
    if not options:
        return dsn, options
    query = "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in kept)
    return urlunsplit(parts._replace(query=query)), options


class Database:
    """One process's pool.

    Requests queue for a connection in this process's own FIFO (an asyncio semaphore with one
    permit per pooled connection), not inside psqlpy: a psqlpy acquire that times out is not
    withdrawn (its waiter stays queued in the pool until a connection frees up), so under
    sustained overload that queue would only grow. Here a request that gives up after
    `acquire_timeout` leaves the queue, and the queue never holds more than the requests
    currently waiting. `statement_timeout` (seconds, 0: none) bounds the time a request may hold
    a connection: PostgreSQL cancels a statement that runs or waits for a lock longer.

    Load shedding: when `max_waiting` requests already wait for a connection, the next one is
    refused at once (StoreOverloaded) instead of queueing for up to `acquire_timeout`; a client
    told to come back soon does better than one kept waiting for a connection it may not get.

    A connection whose use succeeded is kept checked out, on this process's own idle stack, for
    the next request: a psqlpy pool checkout and return costs about as much CPU as the statement
    itself (~100 us on the 2-CPU box, benchmarks/RESULTS.md). One that failed in any way goes
    back to psqlpy's pool, which drops it if it is broken; an availability error empties the
    stack, since a PostgreSQL restart breaks every connection at once; and one that sat idle
    longer than `HELD_IDLE_CHECK_SECONDS` is checked with a ping before use, so a restart during
    a quiet spell costs a ping, not a failed request.
    """

    HELD_IDLE_CHECK_SECONDS = 1.0

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int,
        acquire_timeout: float,
        statement_timeout: float = 0.0,
        max_waiting: int = 0,
        connect_timeout: int = 3,
        application_name: str = "orders-service",
        custom_plans: bool = False,
    ) -> None:
        """`max_waiting`: requests allowed to queue for a connection; 0: 4 x the pool size.
        `custom_plans`: see with_session_settings."""
        size = max(2, pool_size)
        plain_dsn, tls = tls_options(dsn)
        self._pool = psqlpy.ConnectionPool(
            dsn=with_session_settings(plain_dsn, statement_timeout, custom_plans=custom_plans),
            **tls,
            max_db_pool_size=size,
            connect_timeout_sec=connect_timeout,
            application_name=application_name,
        )
        self._permits = asyncio.Semaphore(size)
        self.in_use = 0  # connections handed out (a held idle one is not in use)
        self._held: list[tuple[psqlpy.Connection, float]] = []  # (connection, monotonic time idle since)
        self._acquire_timeout = acquire_timeout
        self._max_waiting = max_waiting or 4 * size
        self.waiting = 0
        self.waits_total = 0
        self.acquire_timeouts_total = 0
        self.shed_total = 0
        self._last_ok = -1e9  # monotonic time a connection was last used without error

    async def _acquire(self) -> psqlpy.Connection:
        """A permit, then a pooled connection, both within the acquire timeout."""
        if self._permits.locked():
            if self.waiting >= self._max_waiting:
                self.shed_total += 1
                raise StoreOverloaded("too many requests waiting for a database connection")
            self.waits_total += 1
        try:
            async with asyncio.timeout(self._acquire_timeout):
                self.waiting += 1
                try:
                    await self._permits.acquire()
                finally:
                    self.waiting -= 1
                try:
                    conn = await self._checkout()
                except BaseException:
                    self._permits.release()
                    raise
                self.in_use += 1
                return conn
        except TimeoutError:
            self.acquire_timeouts_total += 1
            raise StoreUnavailable("no database connection available in time") from None
        except pg_errors.Error as exc:
            if is_unavailable(exc):
                raise StoreUnavailable("database unreachable") from exc
            raise

    async def _checkout(self) -> psqlpy.Connection:
        """The most recently used held connection (pinged first if it sat idle long), else one
        from psqlpy's pool."""
        while self._held:
            conn, idle_since = self._held.pop()
            if time.monotonic() - idle_since < self.HELD_IDLE_CHECK_SECONDS:
                return conn
            try:
                await conn.execute("SELECT 1", prepared=False)
                return conn
            except pg_errors.Error:
                conn.close()
                self._drop_held()
            except BaseException:  # the acquire timed out or was cancelled during the ping
                conn.close()
                raise
        return await self._pool.connection()

    @property
    def held(self) -> int:
        """Connections kept checked out for the next request."""
        return len(self._held)

    def _drop_held(self) -> None:
        held, self._held = self._held, []
        for conn, _ in held:
            conn.close()

    def _release(self, conn: psqlpy.Connection, healthy: bool) -> None:
        if healthy:
            now = time.monotonic()
            self._last_ok = now
            self._held.append((conn, now))
        else:
            conn.close()
        self.in_use -= 1
        self._permits.release()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psqlpy.Connection]:
        """A pooled connection; StoreUnavailable when none comes within the acquire timeout."""
        conn = await self._acquire()
        healthy = False
        try:
            yield conn
            healthy = True
        except pg_errors.Error as exc:
            if is_unavailable(exc):
                self._drop_held()
                raise StoreUnavailable("database connection failed") from exc
            raise
        finally:
            self._release(conn, healthy)

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

    async def probe(self, recent: float = 2.0) -> None:
        """Raise StoreUnavailable unless PostgreSQL answers, without ever queueing behind requests.

        A connection used without error in the last `recent` seconds is proof enough (no query).
        Otherwise a `SELECT 1` runs only if a connection is free right now; when every one is
        taken and none has completed a statement for that long, the process cannot serve.
        """
        if time.monotonic() - self._last_ok < recent:
            return
        if self._permits.locked():
            raise StoreUnavailable("every database connection is busy and none has completed recently")
        await self.ping()

    def stats(self) -> PoolStats:
        status = self._pool.status()
        in_use = self.in_use
        return PoolStats(
            size=status.size,
            max_size=status.max_size,
            in_use=in_use,
            idle=max(0, status.size - in_use),
            waiting=self.waiting,
            waits_total=self.waits_total,
            acquire_timeouts_total=self.acquire_timeouts_total,
            shed_total=self.shed_total,
        )

    def close(self) -> None:
        self._drop_held()
        self._pool.close()
