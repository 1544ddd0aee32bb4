"""No statement of the request path reads a whole table, whatever plan PostgreSQL caches for it.

The service's statements are prepared once per connection. PostgreSQL switches a prepared
statement to a generic plan after five runs and keeps it until the table's statistics change
(ANALYZE): a generic plan made while a table was nearly empty is used however large the table
grows, wherever ANALYZE does not come (autovacuum off, as on this project's benchmark machine).
The batched conditional update's old generic plan read `orders` twice per batch: the cause of
the slowdown during and after the watcher runs in benchmarks/RESULTS.md. So the request path's
statements are written so that their generic plans use the indexes on an empty database; the
worker role's sessions (a few batched statements a second) plan every statement instead.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import psqlpy
import pytest

from service.app import Resources
from service.config import load_settings
from service.store.database import with_session_settings
from service.store.postgres import keyed_creates, orders, outbox
from tests.conftest import IsolatedSchema

# Run only by the worker role, whose sessions take custom plans (see with_session_settings): the
# relay's statements and the purges. Their generic plans do scan small tables.
WORKER_ONLY = {"_PURGE_CLAIMS", "_OUTBOX_CLAIM", "_OUTBOX_MARK", "_OUTBOX_DELETE", "_OUTBOX_PURGE", "_OUTBOX_TRY_LOCK"}
_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b")


def _statements() -> dict[str, str]:
    found = {}
    for module in (orders, keyed_creates, outbox):
        for name, value in vars(module).items():
            if name.startswith("_") and isinstance(value, str) and _SQL.search(value):
                found[f"{module.__name__.rsplit('.', 1)[1]}.{name}"] = value.strip()
    return found


STATEMENTS = _statements()
REQUEST_PATH = {label: sql for label, sql in STATEMENTS.items() if label.split(".")[1] not in WORKER_ONLY}


async def _generic_plan(dsn: str, sql: str) -> list[str]:
    conn = await psqlpy.connect(dsn=dsn)
    try:
        await conn.execute_batch(f"SET plan_cache_mode = force_generic_plan; PREPARE statement AS {sql}")
        count = max((int(n) for n in re.findall(r"\$(\d+)", sql)), default=0)
        arguments = f"({', '.join(['NULL'] * count)})" if count else ""
        rows = (await conn.execute(f"EXPLAIN EXECUTE statement{arguments}", prepared=False)).result(as_tuple=True)
    finally:
        conn.close()
    return [row[0] for row in rows]


def test_the_statements_are_found() -> None:
    assert {"orders._UPDATE_MANY", "orders._GET_MANY", "keyed_creates._EXISTING_CLAIMS"} <= set(REQUEST_PATH)
    assert {f"{label.split('.')[1]}" for label in STATEMENTS} >= WORKER_ONLY


@pytest.mark.parametrize("label", sorted(REQUEST_PATH))
async def test_the_generic_plan_on_an_empty_database_reads_no_table_sequentially(
    schema: IsolatedSchema, label: str
) -> None:
    plan = await _generic_plan(schema.dsn, REQUEST_PATH[label])
    assert not [line for line in plan if "Seq Scan" in line], "\n".join(plan)


def _batch(ids: list[uuid.UUID]) -> list[list[Any]]:
    """_UPDATE_MANY's parameters for a change of these orders from version 1 (whether or not they exist)."""
    now = datetime.now(UTC)
    rows = [
        [i, "p", 2, "pending", 2, now, 1, uuid.uuid4(), "order.updated", "{}", None, None, now, "o", "o"] for i in ids
    ]
    return [list(column) for column in zip(*rows, strict=True)]


async def _sequential_scans_after_growth(dsn: str, sql: str, parameters: list[Any]) -> int:
    """Run `sql` eight times on a nearly empty database, grow `orders` and `outbox` to 20,000 rows
    each, run it once more: how many sequential scans of those tables that last run made (in one
    transaction, so the count is this session's own)."""
    count = "SELECT coalesce(sum(seq_scan), 0) FROM pg_stat_xact_user_tables WHERE relname IN ('orders', 'outbox')"
    conn = await psqlpy.connect(dsn=dsn)
    try:
        async with conn.transaction() as tx:
            for _ in range(8):
                await tx.execute(sql, parameters)
            await tx.execute_batch(
                "INSERT INTO orders (id, product, quantity, status, version, created_at, updated_at, owner)"
                " SELECT gen_random_uuid(), 'p', 1, 'pending', 1, now(), now(), 'o' FROM generate_series(1, 20000);"
                "INSERT INTO outbox (event_id, event_type, order_id, payload, occurred_at)"
                " SELECT gen_random_uuid(), 'order.created', gen_random_uuid(), '{}', now()"
                " FROM generate_series(1, 20000)"
            )
            before = (await tx.execute(count, prepared=False)).result(as_tuple=True)[0][0]
            await tx.execute(sql, parameters)
            after = (await tx.execute(count, prepared=False)).result(as_tuple=True)[0][0]
    finally:
        conn.close()
    return int(after) - int(before)


async def test_the_batched_update_keeps_to_the_index_as_the_table_grows(schema: IsolatedSchema) -> None:
    scans = await _sequential_scans_after_growth(schema.dsn, orders._UPDATE_MANY, _batch([uuid.uuid4()]))
    assert scans == 0


async def test_a_worker_statement_scans_without_custom_plans_and_not_with_them(schema: IsolatedSchema) -> None:
    """The control and the remedy: the relay's delete, on a session as the worker role opens them."""
    ids = [[1, 2, 3]]
    assert await _sequential_scans_after_growth(schema.dsn, outbox._OUTBOX_DELETE, ids) > 0
    worker_dsn = with_session_settings(schema.dsn, 0.0, custom_plans=True)
    assert await _sequential_scans_after_growth(worker_dsn, outbox._OUTBOX_DELETE, ids) == 0


@pytest.mark.parametrize(("role", "mode"), [("worker", "force_custom_plan"), ("http", "auto"), ("grpc", "auto")])
async def test_each_role_plans_as_it_needs(schema: IsolatedSchema, role: str, mode: str) -> None:
    resources = Resources(load_settings({"DATABASE_URL": schema.dsn}), role=role)
    try:
        assert await resources.db.fetch("SHOW plan_cache_mode") == [(mode,)]
    finally:
        await resources.aclose()
