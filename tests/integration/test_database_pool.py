"""Database keeps connections whose use succeeded and never hands out a broken one unchecked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.domain import StoreUnavailable
from service.store.database import Database
from tests.conftest import IsolatedSchema, _admin

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(schema: IsolatedSchema) -> AsyncIterator[Database]:
    database = Database(schema.dsn, pool_size=2, acquire_timeout=5.0)
    try:
        yield database
    finally:
        database.close()


async def _backend(db: Database) -> int:
    return int((await db.fetch("SELECT pg_backend_pid()"))[0][0])


async def test_a_connection_whose_use_succeeded_serves_the_next_request(db: Database) -> None:
    first = await _backend(db)
    assert db.held == 1
    assert await _backend(db) == first
    stats = db.stats()
    assert (stats.in_use, stats.waiting) == (0, 0)


async def test_a_failed_statement_gives_its_connection_back_to_the_pool(db: Database) -> None:
    await _backend(db)
    with pytest.raises(Exception, match="division by zero"):
        await db.fetch("SELECT 1 / 0")
    # It went back to psqlpy's pool (which checks it), not onto the stack of held connections.
    assert (db.held, db.stats().in_use) == (0, 0)
    await _backend(db)
    assert db.held == 1


async def test_a_held_connection_broken_during_a_quiet_spell_is_replaced_before_use(
    db: Database, schema: IsolatedSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await _backend(db)
    await _admin(schema.base_dsn, f"SELECT pg_terminate_backend({first})")
    monkeypatch.setattr(Database, "HELD_IDLE_CHECK_SECONDS", 0.0)  # every held connection counts as idle long
    second = await _backend(db)  # the ping finds the broken one; a fresh connection answers
    assert second != first


async def test_a_broken_held_connection_used_at_once_fails_as_unavailable_and_is_not_kept(
    db: Database, schema: IsolatedSchema
) -> None:
    first = await _backend(db)
    await _admin(schema.base_dsn, f"SELECT pg_terminate_backend({first})")
    with pytest.raises(StoreUnavailable):
        await _backend(db)
    assert await _backend(db) != first


async def test_a_cancelled_request_does_not_leave_its_connection_held(db: Database) -> None:
    task = asyncio.ensure_future(db.fetch("SELECT pg_sleep(1)"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (db.held, db.stats().in_use) == (0, 0)
    assert await _backend(db) > 0
