"""The service's PostgreSQL sessions plan every statement with its parameters.

PostgreSQL switches a prepared statement to a generic plan after five runs and keeps it until the
table's statistics change. The batched conditional update's generic plan, made while `orders`
is nearly empty, reads the whole table; without ANALYZE (a fresh deployment, or a server where
autovacuum is off, as on this project's benchmark machine) it kept doing so as the table grew:
the cause of the slowdown after watcher runs in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import psqlpy

from service.store.database import Database, with_session_settings
from service.store.postgres.orders import _UPDATE_MANY
from tests.conftest import IsolatedSchema

_SEQ_SCANS = "SELECT coalesce(sum(seq_scan), 0) FROM pg_stat_xact_user_tables WHERE relname = 'orders'"


def _batch(ids: list[uuid.UUID]) -> list[list[Any]]:
    """_UPDATE_MANY's parameters for a change of these orders from version 1 (whether or not they exist)."""
    now = datetime.now(UTC)
    rows = [
        [i, "p", 2, "pending", 2, now, 1, uuid.uuid4(), "order.updated", "{}", None, None, now, "o", "o"] for i in ids
    ]
    return [list(column) for column in zip(*rows, strict=True)]


async def _sequential_scans_after_growth(dsn: str) -> int:
    """Run the batched update eight times on a nearly empty `orders`, grow it to 20,000 rows, run
    it once more: how many sequential scans of `orders` that last run made (in one transaction,
    so the count is this session's own)."""
    conn = await psqlpy.connect(dsn=dsn)
    try:
        async with conn.transaction() as tx:
            for _ in range(8):
                await tx.execute(_UPDATE_MANY, _batch([uuid.uuid4(), uuid.uuid4()]))
            await tx.execute(
                "INSERT INTO orders (id, product, quantity, status, version, created_at, updated_at, owner)"
                " SELECT gen_random_uuid(), 'p', 1, 'pending', 1, now(), now(), 'o' FROM generate_series(1, 20000)",
                prepared=False,
            )
            before = (await tx.execute(_SEQ_SCANS, prepared=False)).result(as_tuple=True)[0][0]
            await tx.execute(_UPDATE_MANY, _batch([uuid.uuid4(), uuid.uuid4()]))
            after = (await tx.execute(_SEQ_SCANS, prepared=False)).result(as_tuple=True)[0][0]
    finally:
        conn.close()
    return int(after) - int(before)


async def test_without_the_setting_the_generic_plan_reads_the_whole_table(schema: IsolatedSchema) -> None:
    """The control: what the setting prevents does happen on this PostgreSQL."""
    assert await _sequential_scans_after_growth(schema.dsn) > 0


async def test_with_the_service_settings_the_batched_update_uses_the_index(schema: IsolatedSchema) -> None:
    assert await _sequential_scans_after_growth(with_session_settings(schema.dsn, 0.0)) == 0


async def test_every_pooled_session_has_the_settings(database: Database) -> None:
    assert await database.fetch("SHOW plan_cache_mode") == [("force_custom_plan",)]
