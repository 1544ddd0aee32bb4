"""Pool exhaustion: more concurrent requests than pooled connections, all of them slow.

A session of the test's own locks the orders table, so every request that gets a connection
blocks on the lock. Beyond DB_MAX_WAITING queued requests a process sheds the next one at once
(503 "overloaded" / RESOURCE_EXHAUSTED); the queued ones wait at most DB_ACQUIRE_TIMEOUT and
then answer 503 / UNAVAILABLE; those holding a connection are cancelled by PostgreSQL after
DB_STATEMENT_TIMEOUT and answer the same. No request hangs; the queue is empty afterwards and
the service serves normally as soon as the lock is gone.

The outcomes are told apart by what the service answered, not by wall-clock bounds (which flaked
on a loaded 2-core machine): the only time bound is a generous "nothing hung" one; how fast a
shed request is answered is recorded as a figure (slowest_shed_s), not asserted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable

import grpc
import httpx
import psqlpy
import pytest

from service.domain import StoreUnavailable
from service.grpc.pb import orders_pb2, orders_pb2_grpc
from service.store.database import Database
from tests.conftest import IsolatedSchema
from tests.e2e.conftest import ServiceProcess
from tests.faults.conftest import PrivatePostgres, PrivateRedis, record_figures

POOL_SIZE = 2
ACQUIRE_TIMEOUT = 1.0
STATEMENT_TIMEOUT = 3.0
CONCURRENT = 50
MAX_WAITING = 4
# "Nothing hung": far above the slowest legitimate answer (a statement timeout after an acquire
# wait), far below the client's 30 s, so scheduling delays of a loaded machine cannot fail it.
HANG_BOUND = ACQUIRE_TIMEOUT + STATEMENT_TIMEOUT + 10.0


async def _lock_orders(dsn: str) -> AsyncIterator[None]:
    conn = await psqlpy.connect(dsn=dsn)
    tx = conn.transaction()
    await tx.begin()
    await tx.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    try:
        yield
    finally:
        await tx.rollback()
        conn.close()


@pytest.mark.e2e
def test_pool_exhaustion_queues_boundedly_and_answers_503_never_hangs(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    run_service: Callable[..., ServiceProcess],
) -> None:
    proc = run_service(
        private_postgres.url,
        private_redis.url,
        roles="http,grpc",
        DB_POOL_SIZE=str(POOL_SIZE),
        DB_ACQUIRE_TIMEOUT=str(ACQUIRE_TIMEOUT),
        DB_STATEMENT_TIMEOUT=str(STATEMENT_TIMEOUT),
        DB_MAX_WAITING=str(MAX_WAITING),
        # Each request its own statement: coalesced, 50 concurrent reads would be one or two
        # waiters for a connection, and the queue this test fills would never form.
        COALESCE_MAX_BATCH="1",
    )

    async def scenario() -> tuple[list[tuple[str, str, float]], dict[str, int], list[int]]:
        async with (
            httpx.AsyncClient(base_url=proc.base_url, timeout=30, limits=httpx.Limits(max_connections=100)) as http,
            grpc.aio.insecure_channel(proc.grpc_target) as channel,
        ):
            stub = orders_pb2_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]
            order_id = (await http.post("/orders", json={"product": "seed", "quantity": 1})).json()["id"]

            async def rest(n: int) -> tuple[str, str, float]:
                started = time.monotonic()
                if n % 2:
                    response = await http.get(f"/orders/{order_id}")
                else:
                    response = await http.post("/orders", json={"product": "slow", "quantity": 1})
                kind = response.json().get("type", "").rsplit("/", 1)[-1]  # "overloaded" or "unavailable"
                return "rest", f"{response.status_code} {kind}", time.monotonic() - started

            async def rpc(n: int) -> tuple[str, str, float]:
                started = time.monotonic()
                try:
                    await stub.GetOrder(orders_pb2.GetOrderRequest(id=order_id), timeout=30)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                return "grpc", code, time.monotonic() - started

            locked = _lock_orders(private_postgres.url)
            await locked.__anext__()
            try:
                results = await asyncio.gather(
                    *(rest(n) for n in range(CONCURRENT * 2 // 3)),
                    *(rpc(n) for n in range(CONCURRENT - CONCURRENT * 2 // 3)),
                )
                pool = (await http.get("/metrics/db")).json()
            finally:
                await locked.aclose()
            after = [(await http.get(f"/orders/{order_id}")).status_code for _ in range(5)]
            after.append((await http.post("/orders", json={"product": "after", "quantity": 1})).status_code)
            return results, pool, after

    results, pool, after = asyncio.run(scenario())
    outcomes = Counter((transport, code) for transport, code, _ in results)
    shed = {("rest", "503 overloaded"), ("grpc", "RESOURCE_EXHAUSTED")}
    timed_out = {("rest", "503 unavailable"), ("grpc", "UNAVAILABLE")}
    assert set(outcomes) <= shed | timed_out, outcomes
    # 3 processes (2 http workers + 1 grpc) queue at most POOL_SIZE + MAX_WAITING acquires each
    # (coalesced reads share one), far fewer than the requests: both kinds of answer occur.
    assert sum(n for key, n in outcomes.items() if key in shed) > 0, outcomes
    assert sum(n for key, n in outcomes.items() if key in timed_out) > 0, outcomes
    slowest = max(seconds for _, _, seconds in results)
    assert slowest <= HANG_BOUND, f"a request waited {slowest:.2f} s"
    assert pool["waiting"] == 0 and pool["in_use"] == 0, pool  # nothing left queued once they answered
    assert pool["acquire_timeouts_total"] + pool["shed_total"] > 0
    assert after == [200] * 5 + [201]
    record_figures(
        "pool-exhaustion",
        {
            "requests": len(results),
            "answers": {f"{t} {c}": n for (t, c), n in outcomes.items()},
            "slowest_s": round(slowest, 2),
            "slowest_shed_s": round(max((t for tr, c, t in results if (tr, c) in shed), default=0.0), 3),
            "pool_after": pool,
        },
    )


# ---- the Database pool itself (regressions of the two findings) --------------------------------


@pytest.mark.integration
async def test_timed_out_acquires_leave_no_waiter_behind(schema: IsolatedSchema) -> None:
    """psqlpy does not withdraw an acquire that timed out (it stays queued in the pool): the
    Database queues requests itself, so a timed-out request leaves no waiter behind."""
    db = Database(schema.dsn, pool_size=2, acquire_timeout=0.2, max_waiting=30)  # all 30 queue, none is shed
    try:
        async with db.connection(), db.connection():
            outcomes = await asyncio.gather(*(db.fetch("SELECT 1") for _ in range(30)), return_exceptions=True)
            assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
            assert db.stats().waiting == 0
            assert db._pool.status().waiting == 0  # nothing queued inside psqlpy either
            assert db.stats().acquire_timeouts_total == 30
        assert await db.fetch("SELECT 1") == [(1,)]
        assert db.stats().in_use == 0
        # every permit came back: as many connections as the pool holds can be taken at once
        async with db.connection(), db.connection():
            pass
    finally:
        db.close()


@pytest.mark.integration
async def test_a_statement_blocked_longer_than_the_statement_timeout_is_unavailable(schema: IsolatedSchema) -> None:
    db = Database(schema.dsn, pool_size=2, acquire_timeout=1.0, statement_timeout=0.3)
    locker = await psqlpy.connect(dsn=schema.dsn)
    try:
        tx = locker.transaction()
        await tx.begin()
        await tx.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(StoreUnavailable):
            await db.fetch("SELECT count(*) FROM orders WHERE id = $1", [uuid.uuid4()])
        await tx.rollback()
        assert await db.fetch("SELECT count(*) FROM orders") == [(0,)]  # the connection is fine afterwards
        assert (await db.fetch("SHOW search_path"))[0][0] == schema.name  # the DSN's own options are kept
    finally:
        locker.close()
        db.close()
