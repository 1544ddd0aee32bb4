"""Fault injection: private PostgreSQL / Redis servers to stop at will, the real service on them,
and a mixed REST + gRPC load that records every request it sent and what came back.

Never touches the shared servers: each test that injects a fault starts its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from benchmarks.processes import children
from service.grpc.pb import orders_pb2, orders_pb2_grpc
from service.store.database import Database
from tests.e2e.conftest import ServiceProcess
from tests.private_servers import PrivatePostgres, PrivateRedis, wait_until

# ---- private servers ---------------------------------------------------------------------------


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


# ---- the service --------------------------------------------------------------------------------


@pytest.fixture
def run_service() -> Iterator[Callable[..., ServiceProcess]]:
    """run_service(database_url, redis_url, roles=..., **env) -> a running service, stopped afterwards."""
    started: list[ServiceProcess] = []

    def factory(database_url: str, redis_url: str, roles: str = "http,grpc,worker", **env: str) -> ServiceProcess:
        proc = ServiceProcess(database_url, redis_url, roles, env)
        proc.start(wait_for_grpc="grpc" in roles)
        started.append(proc)
        if "grpc" in roles:
            wait_until(lambda: _grpc_serving(proc.grpc_target), timeout=20, what="gRPC serving")
        return proc

    yield factory
    for proc in started:
        proc.stop()


def _grpc_serving(target: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def role_pids(proc: ServiceProcess) -> dict[str, list[int]]:
    """pid of each role process (children of the supervisor), and of their own children
    (the http role's granian workers) as "<role>-worker"."""
    assert proc.process is not None
    found: dict[str, list[int]] = {}
    for pid in children(proc.process.pid):
        try:
            args = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        except FileNotFoundError:
            continue
        if "role" not in args:
            continue
        role = args[args.index("role") + 1]
        found.setdefault(role, []).append(pid)
        for worker in children(pid):
            found.setdefault(f"{role}-worker", []).append(worker)
    return found


def sql(dsn: str, statement: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    async def run() -> list[tuple[Any, ...]]:
        db = Database(dsn, pool_size=2, acquire_timeout=10.0)
        try:
            return await db.fetch(statement, params)
        finally:
            db.close()

    return asyncio.run(run())


# ---- load ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    transport: str  # rest | grpc
    op: str  # create | get | list | update
    started: float  # time.monotonic()
    ended: float
    result: str  # "ok", "http 503", "grpc UNAVAILABLE", "connect error", "timeout", ...
    request_id: str = ""

    @property
    def ok(self) -> bool:
        return self.result == "ok"

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Load:
    """Mixed REST + gRPC load in a background thread (its own event loop), every request recorded.

    Each client loops: create (40%), get (30%), list (20%), update (10%) of an order it created.
    `acked` holds every order id whose create was acknowledged (201 / OK), with its transport.
    """

    base_url: str
    grpc_target: str
    rest_clients: int = 6
    grpc_clients: int = 3
    timeout: float = 10.0
    pause: float = 0.0  # seconds between one client's requests
    outcomes: list[Outcome] = field(default_factory=list)
    acked: dict[str, str] = field(default_factory=dict)
    grpc_options: tuple[tuple[str, int], ...] = (
        # reconnect soon after the server is back (the default backoff starts at 1 s and grows)
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
    )
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Load:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 10)
            assert not self._thread.is_alive(), "load did not stop"
        return self

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- figures --

    def between(self, start: float, end: float) -> list[Outcome]:
        return [o for o in list(self.outcomes) if start <= o.started < end]

    def errors(self, outcomes: list[Outcome] | None = None) -> Counter[str]:
        return Counter(o.result for o in (list(self.outcomes) if outcomes is None else outcomes) if not o.ok)

    def first_ok_after(self, moment: float, transport: str | None = None) -> float | None:
        """When the first request that started after `moment` succeeded (its end), if one did."""
        ends = [
            o.ended
            for o in self.outcomes
            if o.started >= moment and o.ok and (transport is None or o.transport == transport)
        ]
        return min(ends) if ends else None

    def summary(self) -> dict[str, Any]:
        return {
            "requests": len(self.outcomes),
            "ok": sum(o.ok for o in self.outcomes),
            "errors": dict(self.errors()),
            "acked_creates": len(self.acked),
        }

    # -- the clients --

    async def _main(self) -> None:
        async with (
            httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout) as http,
            grpc.aio.insecure_channel(self.grpc_target, options=self.grpc_options) as channel,
        ):
            stub = orders_pb2_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]
            clients = [self._rest_client(http, n) for n in range(self.rest_clients)]
            clients += [self._grpc_client(stub, n) for n in range(self.grpc_clients)]
            await asyncio.gather(*clients)

    @staticmethod
    def _op(counter: int, mine: list[str]) -> str:
        slot = counter % 10
        if not mine or slot < 4:
            return "create"
        return "get" if slot < 7 else "list" if slot < 9 else "update"

    async def _rest_client(self, http: httpx.AsyncClient, n: int) -> None:
        mine: list[str] = []
        counter = n
        while not self._stop.is_set():
            op = self._op(counter, mine)
            counter += 1
            rid = f"load-rest-{n}-{counter}"
            headers = {"x-request-id": rid}
            started = time.monotonic()
            try:
                if op == "create":
                    response = await http.post(
                        "/orders", json={"product": f"fault-{n}", "quantity": 1}, headers=headers
                    )
                    expected = 201
                elif op == "get":
                    response = await http.get(f"/orders/{mine[counter % len(mine)]}", headers=headers)
                    expected = 200
                elif op == "list":
                    response = await http.get("/orders", params={"limit": 10}, headers=headers)
                    expected = 200
                else:
                    response = await http.put(
                        f"/orders/{mine[counter % len(mine)]}",
                        json={"product": f"fault-{n}", "quantity": 2},
                        headers=headers,
                    )
                    expected = 200
                result = "ok" if response.status_code == expected else f"http {response.status_code}"
                if result == "ok" and op == "create":
                    order_id = response.json()["id"]
                    mine.append(order_id)
                    self.acked[order_id] = "rest"
            except httpx.TimeoutException:
                result = "timeout"
            except httpx.ConnectError:
                result = "connect error"
            except httpx.HTTPError as exc:
                result = f"transport error {type(exc).__name__}"
            self.outcomes.append(Outcome("rest", op, started, time.monotonic(), result, rid))
            if result != "ok":
                await asyncio.sleep(0.05)
            elif self.pause:
                await asyncio.sleep(self.pause)

    async def _grpc_client(self, stub: Any, n: int) -> None:
        mine: list[str] = []
        counter = n
        while not self._stop.is_set():
            op = self._op(counter, mine)
            counter += 1
            rid = f"load-grpc-{n}-{counter}"
            call = {"timeout": self.timeout, "metadata": (("x-request-id", rid),)}
            started = time.monotonic()
            try:
                if op == "create":
                    reply = await stub.CreateOrder(
                        orders_pb2.CreateOrderRequest(product=f"fault-grpc-{n}", quantity=1), **call
                    )
                    mine.append(reply.order.id)
                    self.acked[reply.order.id] = "grpc"
                elif op == "get":
                    await stub.GetOrder(orders_pb2.GetOrderRequest(id=mine[counter % len(mine)]), **call)
                elif op == "list":
                    await stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=10), **call)
                else:
                    await stub.UpdateOrder(
                        orders_pb2.UpdateOrderRequest(
                            id=mine[counter % len(mine)], product=f"fault-grpc-{n}", quantity=2
                        ),
                        **call,
                    )
                result = "ok"
            except grpc.aio.AioRpcError as exc:
                result = "timeout" if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED else f"grpc {exc.code().name}"
            self.outcomes.append(Outcome("grpc", op, started, time.monotonic(), result, rid))
            if result != "ok":
                await asyncio.sleep(0.05)
            elif self.pause:
                await asyncio.sleep(self.pause)


def missing_orders(dsn: str, ids: list[str]) -> list[str]:
    import uuid

    found = {str(r[0]) for r in sql(dsn, "SELECT id FROM orders WHERE id = ANY($1)", [[uuid.UUID(i) for i in ids]])}
    return [i for i in ids if i not in found]


def record_figures(name: str, figures: dict[str, Any]) -> None:
    """Print the figures (shown with -s) and append them to FAULTS_FIGURES (a JSON-lines file) if set."""
    line = json.dumps({"scenario": name, **figures}, default=str)
    print(f"\nFIGURES {line}")
    target = os.environ.get("FAULTS_FIGURES")
    if target:
        with open(target, "a") as out:
            out.write(line + "\n")


def served_request_ids(proc: ServiceProcess) -> set[str]:
    """Request ids of every REST request and gRPC call the service logged an access line for."""
    found = set()
    for line in proc.logs().splitlines():
        if '"message":"request"' in line or '"message":"call"' in line:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("request_id"):
                    found.add(record["request_id"])
    return found


def unconfirmed(dsn: str, ids: list[str]) -> int:
    import uuid

    rows = sql(
        dsn, "SELECT count(*) FROM orders WHERE status <> 'confirmed' AND id = ANY($1)", [[uuid.UUID(i) for i in ids]]
    )
    return int(rows[0][0])


def wait_outbox_drained(dsn: str, timeout: float = 30.0) -> None:
    """Every outbox row published: the confirmations' own events follow the confirmations out."""
    wait_until(
        lambda: sql(dsn, "SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0] == 0,
        timeout=timeout,
        what="outbox drained",
    )
