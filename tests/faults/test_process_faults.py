"""Process faults under mixed REST + gRPC load: SIGTERM of the service, SIGKILL of each role process.

SIGTERM: requests in flight (some held on a row lock, so both transports surely have some) all
complete; a request that fails was refused before the service read it (no access-log line for
its request id), and the service exits 0. SIGKILL of a granian worker, the http role, the grpc
role or the worker role: it is restarted and serves again; nothing acknowledged is lost and every
acknowledged order is confirmed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable

import grpc
import httpx
import psqlpy
import pytest

from service.grpc.pb import orders_pb2, orders_pb2_grpc
from tests.e2e.conftest import ServiceProcess
from tests.faults.conftest import (
    Load,
    PrivatePostgres,
    PrivateRedis,
    missing_orders,
    record_figures,
    role_pids,
    served_request_ids,
    unconfirmed,
    wait_outbox_drained,
    wait_until,
)

pytestmark = pytest.mark.e2e

HELD = 2  # requests per transport held in flight across the SIGTERM


async def _held_in_flight_across_sigterm(proc: ServiceProcess, dsn: str) -> list[str]:
    """Start HELD REST PUTs and HELD gRPC updates blocked on row locks, SIGTERM the service,
    then release the locks; returns each held request's outcome."""
    async with (
        httpx.AsyncClient(base_url=proc.base_url, timeout=20) as http,
        grpc.aio.insecure_channel(proc.grpc_target) as channel,
    ):
        stub = orders_pb2_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]
        ids = [
            (await http.post("/orders", json={"product": "held", "quantity": 1})).json()["id"] for _ in range(2 * HELD)
        ]
        conn = await psqlpy.connect(dsn=dsn)
        tx = conn.transaction()
        await tx.begin()
        await tx.execute("SELECT id FROM orders WHERE id = ANY($1) FOR UPDATE", [[uuid.UUID(i) for i in ids]])

        async def rest(order_id: str) -> str:
            try:
                response = await http.put(f"/orders/{order_id}", json={"product": "held", "quantity": 2})
            except httpx.HTTPError as exc:
                return f"rest {type(exc).__name__}"
            return "ok" if response.status_code == 200 else f"rest {response.status_code}"

        async def rpc(order_id: str) -> str:
            try:
                request = orders_pb2.UpdateOrderRequest(id=order_id, product="held", quantity=2)
                await stub.UpdateOrder(request, timeout=20)
            except grpc.aio.AioRpcError as exc:
                return f"grpc {exc.code().name}"
            return "ok"

        held = [asyncio.ensure_future(rest(i)) for i in ids[:HELD]]
        held += [asyncio.ensure_future(rpc(i)) for i in ids[HELD:]]
        await asyncio.sleep(0.5)
        assert not any(task.done() for task in held), "the held requests did not wait for the lock"
        proc.signal(signal.SIGTERM)
        await asyncio.sleep(1.5)  # the service is shutting down with these in flight
        await tx.commit()
        conn.close()
        return list(await asyncio.gather(*held))


def test_sigterm_under_load_fails_no_in_flight_request(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    run_service: Callable[..., ServiceProcess],
) -> None:
    proc = run_service(private_postgres.url, private_redis.url)
    with Load(proc.base_url, proc.grpc_target, pause=0.005) as load:
        time.sleep(2.0)
        signalled_at = time.monotonic()
        held = asyncio.run(_held_in_flight_across_sigterm(proc, private_postgres.url))
        exit_code = proc.wait(30)
        stopped_s = time.monotonic() - signalled_at
        time.sleep(0.5)
    assert held == ["ok"] * (2 * HELD)
    assert exit_code == 0
    served = served_request_ids(proc)
    failed = [o for o in load.outcomes if not o.ok]
    reached = [o for o in failed if o.request_id in served]
    assert reached == [], f"requests the service had read but did not answer: {reached[:5]}"
    in_flight = [o for o in load.outcomes if o.started < signalled_at < o.ended]
    # Nothing acknowledged is lost: a new service on the same database and stream confirms them all.
    acked = list(load.acked)
    assert missing_orders(private_postgres.url, acked) == []
    restarted = run_service(private_postgres.url, private_redis.url, EVENTS_STREAM=proc.stream)
    wait_until(lambda: unconfirmed(private_postgres.url, acked) == 0, timeout=30, what="all confirmed")
    wait_outbox_drained(private_postgres.url)
    assert restarted.stop() == 0
    record_figures(
        "sigterm",
        {
            **load.summary(),
            "held_in_flight": len(held),
            "load_in_flight_at_sigterm": len(in_flight),
            "failed_after_reaching_service": len(reached),
            "refused_before_reaching_service": len(failed),
            "exit_code": exit_code,
            "stopped_in_s": round(stopped_s, 2),
        },
    )


VICTIMS = ("http-worker", "http", "grpc", "worker")


def test_sigkill_of_each_role_process_is_restarted_and_loses_nothing(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    run_service: Callable[..., ServiceProcess],
) -> None:
    proc = run_service(private_postgres.url, private_redis.url, CLAIM_IDLE_MS="2000")
    figures: dict[str, dict[str, float]] = {}
    with Load(proc.base_url, proc.grpc_target, pause=0.005) as load:
        time.sleep(2.0)
        for victim in VICTIMS:
            before = role_pids(proc)
            pid = before[victim][0]
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)

            def replaced(victim: str = victim, pid: int = pid, count: int = len(before[victim])) -> bool:
                now = role_pids(proc).get(victim, [])
                return len(now) == count and pid not in now

            restarted_s = wait_until(replaced, timeout=30, what=f"{victim} restarted")
            if victim == "worker":
                # serving again = a new order gets confirmed
                created = httpx.post(f"{proc.base_url}/orders", json={"product": "after-kill", "quantity": 1})
                order_id = created.json()["id"]
                wait_until(
                    lambda order_id=order_id: unconfirmed(private_postgres.url, [order_id]) == 0,  # type: ignore[misc]
                    timeout=30,
                    what="confirmed",
                )
                serving_s = time.monotonic() - killed_at
            else:
                transport = "grpc" if victim == "grpc" else "rest"
                wait_until(
                    lambda: load.first_ok_after(killed_at + restarted_s, transport) is not None,  # noqa: B023
                    timeout=30,
                    what=f"{transport} serving again",
                )
                first_ok = load.first_ok_after(killed_at + restarted_s, transport)
                assert first_ok is not None
                serving_s = first_ok - killed_at
            figures[victim] = {
                "restarted_s": round(restarted_s, 2),
                "serving_again_s": round(serving_s, 2),
                "errors": sum(load.errors(load.between(killed_at, time.monotonic())).values()),
            }
            time.sleep(1.0)
        assert load.errors(load.between(time.monotonic() - 0.9, time.monotonic())) == {}
    acked = list(load.acked)
    assert missing_orders(private_postgres.url, acked) == []
    wait_until(lambda: unconfirmed(private_postgres.url, acked) == 0, timeout=30, what="all confirmed")
    wait_outbox_drained(private_postgres.url)
    assert proc.logs().count("role process exited unexpectedly") == 3  # the granian worker: granian's own respawn
    record_figures("sigkill", {**load.summary(), "victims": figures})
