"""Database keeps connections whose use succeeded and never hands out a broken one unchecked."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import psqlpy
import pytest
import trustme

from benchmarks.database import admin_sql, fetch_rows
from service.domain import StoreOverloaded, StoreUnavailable
from service.store.database import Database
from tests.conftest import IsolatedSchema

if TYPE_CHECKING:
    from tests.conftest import TestServices

pytestmark = pytest.mark.integration


async def _backend(db: Database) -> int:
    return int((await db.fetch("SELECT pg_backend_pid()"))[0][0])


async def _terminate(schema: IsolatedSchema, pid: int) -> None:
    """Terminate a backend and wait until it is gone: pg_terminate_backend only signals it, and on
    a loaded box a query could still reach the dying backend and succeed."""
    await admin_sql(schema.base_dsn, f"SELECT pg_terminate_backend({pid})")
    for _ in range(200):
        rows = await fetch_rows(schema.base_dsn, f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")
        if rows[0][0] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"backend {pid} still there 10 s after pg_terminate_backend")


async def test_a_connection_whose_use_succeeded_serves_the_next_request(database: Database) -> None:
    first = await _backend(database)
    assert database.held == 1
    assert await _backend(database) == first
    stats = database.stats()
    assert (stats.in_use, stats.waiting) == (0, 0)


async def test_a_failed_statement_gives_its_connection_back_to_the_pool(database: Database) -> None:
    await _backend(database)
    with pytest.raises(Exception, match="division by zero"):
        await database.fetch("SELECT 1 / 0")
    # It went back to psqlpy's pool (which checks it), not onto the stack of held connections.
    assert (database.held, database.stats().in_use) == (0, 0)
    await _backend(database)
    assert database.held == 1


async def test_a_held_connection_broken_during_a_quiet_spell_is_replaced_before_use(
    database: Database, schema: IsolatedSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await _backend(database)
    await _terminate(schema, first)
    monkeypatch.setattr(Database, "HELD_IDLE_CHECK_SECONDS", 0.0)  # every held connection counts as idle long
    second = await _backend(database)  # the ping finds the broken one; a fresh connection answers
    assert second != first


async def test_a_broken_held_connection_used_at_once_fails_as_unavailable_and_is_not_kept(
    database: Database, schema: IsolatedSchema
) -> None:
    first = await _backend(database)
    await _terminate(schema, first)
    with pytest.raises(StoreUnavailable):
        await _backend(database)
    assert await _backend(database) != first


async def test_a_cancelled_request_does_not_leave_its_connection_held(database: Database) -> None:
    task = asyncio.ensure_future(database.fetch("SELECT pg_sleep(1)"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (database.held, database.stats().in_use) == (0, 0)
    assert await _backend(database) > 0


async def test_beyond_max_waiting_a_request_is_shed_instead_of_queued(schema: IsolatedSchema) -> None:
    db = Database(schema.dsn, pool_size=2, acquire_timeout=60.0, max_waiting=3)
    try:
        async with db.connection(), db.connection():
            queued = [asyncio.ensure_future(db.fetch("SELECT 1")) for _ in range(3)]
            await asyncio.sleep(0)
            assert db.stats().waiting == 3
            with pytest.raises(StoreOverloaded):  # at once: it never joined the 60 s queue
                await db.fetch("SELECT 1")
            assert db.stats().shed_total == 1 and db.stats().waiting == 3
        assert await asyncio.gather(*queued) == [[(1,)]] * 3  # the queued ones were served
    finally:
        db.close()


async def test_the_probe_never_queues_behind_requests(schema: IsolatedSchema) -> None:
    db = Database(schema.dsn, pool_size=2, acquire_timeout=60.0)
    try:
        await db.probe(recent=0.0)  # idle: it runs a SELECT 1
        await db.probe(recent=60.0)  # a connection was used just now: no query needed
        async with db.connection(), db.connection():
            waiter = asyncio.ensure_future(db.fetch("SELECT 1"))
            await asyncio.sleep(0)
            with pytest.raises(StoreUnavailable):  # every connection taken, none finished "recently"
                await db.probe(recent=0.0)
            assert db.stats().waiting == 1  # only the request's own waiter
        await waiter
    finally:
        db.close()


async def test_sslmode_and_sslrootcert_in_the_url_are_honoured(test_services: TestServices, tmp_path: Path) -> None:
    """psqlpy alone would refuse sslrootcert and silently go plaintext with verify-full."""
    from service.store.database import tls_options

    dsn, options = tls_options("postgresql://u@h:5432/db?sslmode=verify-full&sslrootcert=/ca.pem&options=-c%20x%3D1")
    assert dsn == "postgresql://u@h:5432/db?options=-c%20x%3D1"
    assert options == {"ssl_mode": psqlpy.SslMode.Require, "ca_file": "/ca.pem"}
    assert tls_options("postgresql://u@h/db") == ("postgresql://u@h/db", {})

    # the test server speaks no TLS: verify-full must refuse it, not fall back to plaintext
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    db = Database(
        f"{test_services.database_url}?sslmode=verify-full&sslrootcert={ca}", pool_size=2, acquire_timeout=3.0
    )
    try:
        with pytest.raises((StoreUnavailable, psqlpy.exceptions.Error)):
            await db.ping()
    finally:
        db.close()
