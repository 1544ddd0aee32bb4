"""Process model: graceful SIGTERM with a request in flight, and restarts of crashed processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import psqlpy
import pytest

from benchmarks.processes import children
from tests.conftest import IsolatedSchema
from tests.e2e.conftest import settled_ready


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_until(predicate, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


async def test_sigterm_lets_an_in_flight_request_finish_then_exits_0(
    start_service,  # type: ignore[no-untyped-def]
    service_schema: IsolatedSchema,
) -> None:
    service = start_service()
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        order = (await client.post("/orders", json={"product": "slow", "quantity": 1})).json()
        # Hold the order's row lock so the PUT below stays in flight until we let go.
        pool = psqlpy.ConnectionPool(dsn=service_schema.dsn, max_db_pool_size=2)
        conn = await pool.connection()
        tx = conn.transaction()
        await tx.begin()
        await tx.execute("SELECT id FROM orders WHERE id = $1 FOR UPDATE", [__import__("uuid").UUID(order["id"])])
        put = asyncio.create_task(client.put(f"/orders/{order['id']}", json={"product": "slow", "quantity": 2}))
        await asyncio.sleep(0.5)
        assert not put.done()
        service.signal(signal.SIGTERM)
        await asyncio.sleep(1.0)
        assert not put.done()
        # New connections are refused while the in-flight request drains.
        try:
            async with httpx.AsyncClient(timeout=1) as other:
                refused = (await other.get(f"{service.base_url}/health")).status_code != 200
        except httpx.HTTPError:
            refused = True
        assert refused
        await tx.commit()
        conn.close()
        pool.close()
        response = await put
    assert response.status_code == 200
    assert response.json()["quantity"] == 2
    assert await asyncio.to_thread(service.wait, 20) == 0


def test_sigint_also_stops_cleanly(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    service.signal(signal.SIGINT)
    assert service.wait(20) == 0


def test_crashed_http_worker_is_respawned(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    (http_role,) = children(service.process.pid)
    workers = children(http_role)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    assert _wait_until(lambda: len(children(http_role)) == 2 and workers[0] not in children(http_role))
    assert _wait_until(lambda: httpx.get(f"{service.base_url}/health").status_code == 200)
    assert service.process.poll() is None


def test_killed_role_process_is_restarted_by_the_supervisor(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    (http_role,) = children(service.process.pid)
    workers = children(http_role)
    os.kill(http_role, signal.SIGKILL)  # its workers are orphaned: the supervisor must clean them up

    def restarted() -> bool:
        kids = children(service.process.pid)
        if len(kids) != 1 or kids[0] == http_role:
            return False
        try:
            return httpx.get(f"{service.base_url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    assert _wait_until(restarted, timeout=30), service.logs()
    assert not any(_running(pid) for pid in workers)
    assert "restarting" in service.logs()


def test_serve_on_a_machine_without_postgres_or_redis_uses_embedded_servers(start_service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    service = start_service(ORDERS_EMBEDDED="1", DATA_DIR=str(tmp_path / "data"))
    with httpx.Client(base_url=service.base_url, timeout=10) as client:
        ready = settled_ready(client, 200)
        assert ready.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}
        order = client.post("/orders", json={"product": "offline", "quantity": 1}).json()
        assert client.get(f"/orders/{order['id']}").status_code == 200
    assert "embedded servers started" in service.logs()
    assert service.stop() == 0
    assert (tmp_path / "data" / "postgres").is_dir()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CURSOR_SECRET": "too-short"}, "CURSOR_SECRET: it is 9 bytes"),
        ({"CURSOR_SECRET": ""}, "CURSOR_SECRET: it is 0 bytes"),
        ({"REQUIRE_CURSOR_SECRET": "true"}, "CURSOR_SECRET is required"),
    ],
)
def test_serve_stops_at_start_without_a_usable_cursor_secret(env: dict[str, str], expected: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    clean = {k: v for k, v in os.environ.items() if k not in ("CURSOR_SECRET", "REQUIRE_CURSOR_SECRET")}
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        env={**clean, "DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "too-short" not in result.stderr
