"""No statement of the request path reads a whole table, whatever plan PostgreSQL caches for it.

The service's statements are prepared once per connection. PostgreSQL switches a prepared
statement to a generic plan after five runs and keeps it until the table's statistics change
(ANALYZE): a plan made while a table was small is used however large the table grows, wherever
ANALYZE does not come soon (autovacuum off, as on this project's benchmark machine). The point
read of orders (`WHERE id = ANY($1)`) gets a sequential scan as its generic plan while `orders`
holds some hundreds to a couple of thousand rows, which is where every benchmark is after its
seed orders: the cause of the slowdown during and after the watcher runs in benchmarks/RESULTS.md.
Request sessions therefore price sequential scans out (`enable_seqscan=off`; every request-path
statement goes through an index), and the worker role's sessions plan every statement.
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
from service.store.database import Database, with_session_settings
from service.store.postgres import keyed_creates, lists, orders, outbox
from service.store.postgres.outbox import PostgresOutbox
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
    for table_name, table in (("LIST_ONE", lists.LIST_ONE), ("LIST_MANY", lists.LIST_MANY)):
        for shape, sql in table.items():
            found[f"lists.{table_name}{''.join('1' if part else '0' for part in shape)}"] = sql
    return found


STATEMENTS = _statements()
REQUEST_PATH = {label: sql for label, sql in STATEMENTS.items() if label.split(".")[1] not in WORKER_ONLY}


async def _generic_plan(dsn: str, sql: str, rows: int) -> list[str]:
    """The generic plan of `sql` in a session on `dsn`, with `rows` (never analyzed) in each table."""
    conn = await psqlpy.connect(dsn=dsn)
    try:
        await conn.execute_batch(
            "TRUNCATE orders, outbox, idempotency_keys;"
            "INSERT INTO orders (id, product, quantity, status, version, created_at, updated_at, owner)"
            f" SELECT gen_random_uuid(), 'p', 1, 'pending', 1, now(), now(), 'o' FROM generate_series(1, {rows});"
            "INSERT INTO outbox (event_id, event_type, order_id, payload, occurred_at)"
            f" SELECT gen_random_uuid(), 'order.created', gen_random_uuid(), '{{}}', now()"
            f" FROM generate_series(1, {rows});"
            "INSERT INTO idempotency_keys (owner, key, fingerprint, order_id, response, expires_at)"
            f" SELECT 'o', 'k' || n, 'f'::bytea, gen_random_uuid(), '{{}}', now() FROM generate_series(1, {rows}) AS n;"
            f"SET plan_cache_mode = force_generic_plan; PREPARE statement AS {sql}"
        )
        count = max((int(n) for n in re.findall(r"\$(\d+)", sql)), default=0)
        arguments = f"({', '.join(['NULL'] * count)})" if count else ""
        plan = (await conn.execute(f"EXPLAIN EXECUTE statement{arguments}", prepared=False)).result(as_tuple=True)
    finally:
        conn.close()
    return [row[0] for row in plan]


def test_the_statements_are_found() -> None:
    assert {"orders._UPDATE_MANY", "orders._GET_MANY", "keyed_creates._EXISTING_CLAIMS"} <= set(REQUEST_PATH)
    assert len([label for label in REQUEST_PATH if label.startswith("lists.")]) == 16
    assert {f"{label.split('.')[1]}" for label in STATEMENTS} >= WORKER_ONLY


@pytest.mark.parametrize("rows", [0, 300, 1000, 5000])
async def test_request_sessions_plan_no_sequential_scan_at_any_table_size(schema: IsolatedSchema, rows: int) -> None:
    request_dsn = with_session_settings(schema.dsn, 0.0)
    for label, sql in REQUEST_PATH.items():
        plan = await _generic_plan(request_dsn, sql, rows)
        assert not [line for line in plan if "Seq Scan" in line], f"{label} with {rows} rows:\n" + "\n".join(plan)


async def test_without_the_setting_the_point_read_scans_a_table_of_some_hundred_rows(schema: IsolatedSchema) -> None:
    """The control: what the setting prevents happens on this PostgreSQL."""
    plan = await _generic_plan(schema.dsn, orders._GET_MANY, 300)
    assert [line for line in plan if "Seq Scan on orders" in line], "\n".join(plan)


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


@pytest.mark.parametrize(
    ("role", "plans", "seqscan"),
    [("worker", "force_custom_plan", "on"), ("http", "auto", "off"), ("grpc", "auto", "off")],
)
async def test_each_role_plans_as_it_needs(schema: IsolatedSchema, role: str, plans: str, seqscan: str) -> None:
    resources = Resources(load_settings({"DATABASE_URL": schema.dsn}), role=role)
    try:
        assert await resources.db.fetch("SHOW plan_cache_mode") == [(plans,)]
        assert await resources.db.fetch("SHOW enable_seqscan") == [(seqscan,)]
    finally:
        await resources.aclose()


async def test_the_relay_session_plans_as_the_worker_does(schema: IsolatedSchema, database: Database) -> None:
    async with PostgresOutbox(database, schema.dsn).relay_session() as session:
        assert await session._execute("SHOW plan_cache_mode", []) == [("force_custom_plan",)]
        assert await session._execute("SHOW enable_seqscan", []) == [("on",)]
        assert await session._execute("SHOW enable_bitmapscan", []) == [("off",)]  # index order


async def _plan(dsn: str, sql: str, parameters: list[Any], *, setup: str = "", analyze: bool = False) -> list[str]:
    """The plan of `sql` with these parameters (a custom plan: the unnamed statement) in a session
    on `dsn`, after `setup`; with `analyze` the statement runs (and is rolled back)."""
    conn = await psqlpy.connect(dsn=dsn)
    try:
        if setup:
            await conn.execute_batch(setup)
        explain = "EXPLAIN (ANALYZE, COSTS OFF) " if analyze else "EXPLAIN (COSTS OFF) "
        await conn.execute_batch("BEGIN")
        rows = (await conn.execute(explain + sql, parameters, prepared=False)).result(as_tuple=True)
        await conn.execute_batch("ROLLBACK")
    finally:
        conn.close()
    return [row[0] for row in rows]


_BACKLOG = (
    "INSERT INTO outbox (event_id, event_type, order_id, payload, occurred_at)"
    " SELECT gen_random_uuid(), 'order.created', gen_random_uuid(), '{}', now() FROM generate_series(1, 30000)"
)


async def test_the_relay_reads_a_large_backlog_in_index_order(schema: IsolatedSchema) -> None:
    """30,000 unpublished rows, never analyzed: the relay's session reads its batch through the
    partial index in id order (stopping after the batch), where the worker's other sessions read
    every unpublished row and sort them (the control)."""
    relay_dsn = with_session_settings(schema.dsn, 0.0, custom_plans=True, index_order=True)
    plan = await _plan(relay_dsn, outbox._OUTBOX_CLAIM, [500], setup=_BACKLOG)
    assert any("Index Scan using outbox_unpublished_idx" in line for line in plan), "\n".join(plan)
    assert not [line for line in plan if "Sort" in line or "Bitmap" in line], "\n".join(plan)
    worker_dsn = with_session_settings(schema.dsn, 0.0, custom_plans=True)
    control = await _plan(worker_dsn, outbox._OUTBOX_CLAIM, [500])
    assert [line for line in control if "Bitmap Heap Scan on outbox" in line], "\n".join(control)


@pytest.mark.parametrize("custom_plans", [True, False], ids=["worker", "request"])
async def test_the_batched_update_joins_its_input_by_hash(schema: IsolatedSchema, custom_plans: bool) -> None:
    """A batch of 110 changes among 30,000 orders (never analyzed) joins orders, its input and the
    locked ids by hash. With the locked ids as `IN (SELECT id FROM locked)` PostgreSQL chose a
    nested loop over the locked rows (worker sessions) or over the input, scanned again for each
    order (request sessions): 12,000 comparisons, 7.6-10.7 ms against 3.9 ms for the statement."""
    conn = await psqlpy.connect(dsn=schema.dsn)
    try:
        await conn.execute_batch(
            "INSERT INTO orders (id, product, quantity, status, version, created_at, updated_at, owner)"
            " SELECT gen_random_uuid(), 'p', 1, 'pending', 1, now(), now(), 'o' FROM generate_series(1, 30000)"
        )
        rows = (await conn.execute("SELECT id FROM orders ORDER BY id LIMIT 110")).result(as_tuple=True)
    finally:
        conn.close()
    dsn = with_session_settings(schema.dsn, 0.0, custom_plans=custom_plans)
    plan = await _plan(dsn, orders._UPDATE_MANY, _batch([uuid.UUID(str(row[0])) for row in rows]), analyze=True)
    assert any(re.search(r"Update on orders .*rows=110 ", line) for line in plan), "\n".join(plan)
    assert not [line for line in plan if "Nested Loop" in line], "\n".join(plan)
