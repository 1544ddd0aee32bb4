"""Load-test tool for orders-service: REST or gRPC, fixed request count or duration, report + JSON.

    python -m benchmarks.load --scenario mixed --concurrency 32 --duration 10
    orders-service loadtest --scenario get --transport grpc --requests 20000

The HTTP driver is a minimal keep-alive HTTP/1.1 client on uvloop (no client library on the hot
path), and `--processes N` spreads the connections over N processes, so the tool can push more
load than one service worker absorbs. Use `--scenario health` to measure the tool's own ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from benchmarks.wrk_driver import WRK_SCENARIOS, run_wrk, wrk_binary

SCENARIOS = ("create", "get", "list", "update", "delete", "mixed", "health")
MIXED_WEIGHTS = (("create", 40), ("get", 30), ("list", 20), ("update", 10))
SEED_ORDERS = 1000


class RequestFailed(Exception):
    """A request that got an unexpected answer; `kind` groups it in the report."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class Shard:
    """What one load process measured."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    finished: float = 0.0


# ---- HTTP -----------------------------------------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; enough of the protocol for this service."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None = None, extra: str = "") -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{extra}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + (body or b""))
        try:
            raw_head = await self._reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            raise
        status = int(raw_head[9:12])
        length = 0
        close = False
        for line in raw_head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lowered = name.lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"connection" and value.strip().lower() == b"close":
                close = True
        payload = await self._reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def fresh_key() -> str:
    return f"load-{uuid.uuid4()}"


class HttpDriver:
    def __init__(self, base_url: str, keyed: bool = False) -> None:
        self.keyed = keyed
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80

    def connection(self) -> HttpConnection:
        return HttpConnection(self.host, self.port)

    @staticmethod
    def _check(status: int, expected: int) -> None:
        if status != expected:
            raise RequestFailed(f"http {status}")

    async def create(self, conn: HttpConnection) -> str:
        body = json.dumps({"product": f"load-{random.randrange(1_000_000)}", "quantity": random.randint(1, 9)})
        extra = f"Idempotency-Key: {fresh_key()}\r\n" if self.keyed else ""
        status, payload = await conn.request("POST", "/orders", body.encode(), extra)
        self._check(status, 201)
        order_id: str = json.loads(payload)["id"]
        return order_id

    async def get(self, conn: HttpConnection, order_id: str) -> None:
        status, _ = await conn.request("GET", f"/orders/{order_id}")
        self._check(status, 200)

    async def list(self, conn: HttpConnection) -> None:
        status, _ = await conn.request("GET", "/orders?limit=20")
        self._check(status, 200)

    async def update(self, conn: HttpConnection, order_id: str) -> None:
        # The whole order, as the peers' PUT wants it; "confirmed" is valid for every order the tool
        # updates (pending or already confirmed).
        body = json.dumps({"product": "load-updated", "quantity": random.randint(1, 9), "status": "confirmed"}).encode()
        status, _ = await conn.request("PUT", f"/orders/{order_id}", body)
        self._check(status, 200)

    async def delete(self, conn: HttpConnection, order_id: str) -> None:
        status, _ = await conn.request("DELETE", f"/orders/{order_id}")
        self._check(status, 204)

    async def health(self, conn: HttpConnection) -> None:
        status, _ = await conn.request("GET", "/health")
        self._check(status, 200)


# ---- gRPC -----------------------------------------------------------------------------------


class GrpcDriver:
    def __init__(self, target: str, keyed: bool = False) -> None:
        self.target = target
        self.keyed = keyed

    def connection(self) -> object:
        import grpc

        from service.grpc.pb import orders_pb2_grpc

        channel = grpc.aio.insecure_channel(self.target)
        return orders_pb2_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]

    async def _call(self, call: Awaitable[object]) -> object:
        import grpc

        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise RequestFailed(f"grpc {exc.code().name}") from None

    async def create(self, stub: object) -> str:
        from service.grpc.pb import orders_pb2

        request = orders_pb2.CreateOrderRequest(product=f"load-{random.randrange(1_000_000)}", quantity=3)
        metadata = (("x-idempotency-key", fresh_key()),) if self.keyed else ()
        response = await self._call(stub.CreateOrder(request, metadata=metadata))  # type: ignore[attr-defined]
        return str(response.order.id)  # type: ignore[attr-defined]

    async def get(self, stub: object, order_id: str) -> None:
        from service.grpc.pb import orders_pb2

        await self._call(stub.GetOrder(orders_pb2.GetOrderRequest(id=order_id)))  # type: ignore[attr-defined]

    async def list(self, stub: object) -> None:
        from service.grpc.pb import orders_pb2

        await self._call(stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=20)))  # type: ignore[attr-defined]

    async def update(self, stub: object, order_id: str) -> None:
        from service.grpc.pb import orders_pb2

        request = orders_pb2.UpdateOrderRequest(id=order_id, product="load-updated", quantity=random.randint(1, 9))
        await self._call(stub.UpdateOrder(request))  # type: ignore[attr-defined]

    async def delete(self, stub: object, order_id: str) -> None:
        from service.grpc.pb import orders_pb2

        await self._call(stub.DeleteOrder(orders_pb2.DeleteOrderRequest(id=order_id)))  # type: ignore[attr-defined]

    async def health(self, stub: object) -> None:
        from service.grpc.pb import orders_pb2

        await self._call(stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=1)))  # type: ignore[attr-defined]


# ---- the run --------------------------------------------------------------------------------


@dataclass
class Plan:
    scenario: str
    transport: str
    base_url: str
    grpc_target: str
    concurrency: int
    requests: int | None
    duration: float | None
    seed_ids: list[str]
    progress: bool
    idempotency_keys: bool = False
    driver: str = "python"


def _driver(plan: Plan) -> HttpDriver | GrpcDriver:
    if plan.transport == "rest":
        return HttpDriver(plan.base_url, plan.idempotency_keys)
    return GrpcDriver(plan.grpc_target, plan.idempotency_keys)


def _pick_mixed() -> str:
    roll = random.randrange(100)
    for name, weight in MIXED_WEIGHTS:
        if roll < weight:
            return name
        roll -= weight
    return "get"


async def _one(driver: HttpDriver | GrpcDriver, conn: object, scenario: str, ids: list[str], doomed: list[str]) -> None:
    op = _pick_mixed() if scenario == "mixed" else scenario
    if op == "create":
        ids.append(await driver.create(conn))  # type: ignore[arg-type]
    elif op == "get":
        await driver.get(conn, random.choice(ids))  # type: ignore[arg-type]
    elif op == "list":
        await driver.list(conn)  # type: ignore[arg-type]
    elif op == "update":
        await driver.update(conn, random.choice(ids))  # type: ignore[arg-type]
    elif op == "delete":
        order_id = doomed.pop() if doomed else await driver.create(conn)  # type: ignore[arg-type]
        await driver.delete(conn, order_id)  # type: ignore[arg-type]
    else:
        await driver.health(conn)  # type: ignore[arg-type]


async def _run_shard(
    plan: Plan, report_progress: Callable[[int, int], None] | None, shard: Shard | None = None
) -> Shard:
    """Drive the plan from this process; `shard` (else a new one) collects the figures as they come,
    so a caller can read them while the run goes on (benchmarks.soak samples it every 10 s)."""
    driver = _driver(plan)
    ids = list(plan.seed_ids)
    doomed: list[str] = []
    shard = Shard() if shard is None else shard
    budget = [plan.requests if plan.requests is not None else sys.maxsize]
    deadline = time.perf_counter() + plan.duration if plan.duration else float("inf")
    perf = time.perf_counter

    async def client() -> None:
        conn = driver.connection()
        while budget[0] > 0 and perf() < deadline:
            budget[0] -= 1
            started = perf()
            try:
                await _one(driver, conn, plan.scenario, ids, doomed)
                shard.latencies.append(perf() - started)
            except RequestFailed as exc:
                shard.errors[exc.kind] += 1
            except (OSError, asyncio.IncompleteReadError) as exc:
                shard.errors[f"connection {type(exc).__name__}"] += 1
                if isinstance(conn, HttpConnection):
                    conn.close()
                await asyncio.sleep(0.01)

    async def progress() -> None:
        while True:
            await asyncio.sleep(1.0)
            if report_progress is not None:
                report_progress(len(shard.latencies), sum(shard.errors.values()))

    if plan.scenario == "delete" and plan.requests:
        warm = driver.connection()
        doomed.extend([await driver.create(warm) for _ in range(plan.requests)])  # type: ignore[arg-type]
    shard.started = perf()
    ticker = asyncio.create_task(progress())
    await asyncio.gather(*(client() for _ in range(plan.concurrency)))
    ticker.cancel()
    shard.finished = perf()
    return shard


def _shard_process(plan: Plan, queue: multiprocessing.Queue[tuple[list[float], dict[str, int], float]]) -> None:
    import uvloop

    shard = uvloop.run(_run_shard(plan, None))
    queue.put((shard.latencies, dict(shard.errors), shard.finished - shard.started))


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


async def _seed(plan: Plan) -> list[str]:
    driver = _driver(plan)
    conn = driver.connection()
    return [await driver.create(conn) for _ in range(SEED_ORDERS)]  # type: ignore[arg-type]


def use_wrk(plan: Plan) -> bool:
    """wrk drives REST when asked to (or, with `auto`, when installed) for a scenario it supports."""
    if plan.driver == "python" or plan.transport != "rest":
        return False
    supported = plan.scenario in WRK_SCENARIOS and plan.duration is not None
    if plan.driver == "wrk" and not (supported and wrk_binary()):
        raise SystemExit("--driver wrk needs wrk installed, --transport rest, --duration and a scenario but delete")
    return supported and wrk_binary() is not None


def run(plan: Plan, processes: int) -> dict[str, object]:
    import uvloop

    if plan.scenario in ("get", "update", "mixed"):
        plan.seed_ids = uvloop.run(_seed(plan))
    if use_wrk(plan):
        assert plan.duration is not None
        measured = run_wrk(
            plan.base_url,
            plan.scenario,
            plan.seed_ids,
            plan.idempotency_keys,
            plan.concurrency,
            plan.duration,
            threads=processes,
        )
        errors_by_kind: dict[str, int] = measured["errors"]  # type: ignore[assignment]
        ok = int(measured["ok"])  # type: ignore[call-overload]
        wall = float(measured["seconds"])  # type: ignore[arg-type]
        return {
            "scenario": plan.scenario,
            "transport": plan.transport,
            "driver": "wrk",
            "concurrency": plan.concurrency,
            "processes": processes,
            "requests_ok": ok,
            "errors": errors_by_kind,
            "error_count": sum(errors_by_kind.values()),
            "seconds": wall,
            "throughput_rps": round(ok / wall, 1) if wall else 0.0,
            "latency_ms": measured["latency_ms"],
        }
    started = time.perf_counter()
    shards: list[tuple[list[float], dict[str, int], float]] = []
    if processes <= 1:

        def show(done: int, failed: int) -> None:
            if plan.progress:
                elapsed = time.perf_counter() - started
                sys.stderr.write(f"\r{done} ok, {failed} errors, {done / elapsed:,.0f} req/s   ")
                sys.stderr.flush()

        shard = uvloop.run(_run_shard(plan, show))
        shards.append((shard.latencies, dict(shard.errors), shard.finished - shard.started))
        if plan.progress:
            sys.stderr.write("\n")
    else:
        ctx = multiprocessing.get_context("spawn")
        queue: multiprocessing.Queue[tuple[list[float], dict[str, int], float]] = ctx.Queue()
        per_process = []
        for index in range(processes):
            share = plan.concurrency // processes + (1 if index < plan.concurrency % processes else 0)
            requests = None
            if plan.requests is not None:
                requests = plan.requests // processes + (1 if index < plan.requests % processes else 0)
            per_process.append(
                Plan(**{**plan.__dict__, "concurrency": max(1, share), "requests": requests, "progress": False})
            )
        workers = [ctx.Process(target=_shard_process, args=(p, queue)) for p in per_process]
        for worker in workers:
            worker.start()
        for _ in workers:
            shards.append(queue.get())
        for worker in workers:
            worker.join()
    wall = max(s[2] for s in shards)
    latencies = sorted(latency for s in shards for latency in s[0])
    errors: Counter[str] = Counter()
    for s in shards:
        errors.update(s[1])
    ok = len(latencies)
    return {
        "scenario": plan.scenario,
        "transport": plan.transport,
        "driver": "python",
        "concurrency": plan.concurrency,
        "processes": processes,
        "requests_ok": ok,
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "seconds": round(wall, 3),
        "throughput_rps": round(ok / wall, 1) if wall else 0.0,
        "latency_ms": {
            "p50": round(_percentile(latencies, 0.50) * 1000, 3),
            "p90": round(_percentile(latencies, 0.90) * 1000, 3),
            "p99": round(_percentile(latencies, 0.99) * 1000, 3),
            "max": round((latencies[-1] if latencies else 0.0) * 1000, 3),
        },
    }


def format_report(report: dict[str, object]) -> str:
    latency = report["latency_ms"]
    assert isinstance(latency, dict)
    lines = [
        f"scenario {report['scenario']} over {report['transport']}: concurrency {report['concurrency']}, "
        f"{report['processes']} load process(es), driver {report['driver']}, {report['seconds']} s",
        f"  throughput  {report['throughput_rps']:>10,} req/s ({report['requests_ok']} ok)",
        f"  latency ms  p50 {latency['p50']}  p90 {latency['p90']}  p99 {latency['p99']}  max {latency['max']}",
        f"  errors      {report['error_count']}" + (f"  {report['errors']}" if report["error_count"] else ""),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orders-service loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="mixed")
    parser.add_argument("--transport", choices=("rest", "grpc"), default="rest")
    parser.add_argument("--url", default=os.environ.get("LOADTEST_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--grpc-target", default=os.environ.get("LOADTEST_GRPC", "127.0.0.1:9090"))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--processes", type=int, default=1, help="load processes (wrk: threads) sharing the connections"
    )
    parser.add_argument(
        "--driver",
        choices=("python", "wrk", "auto"),
        default="python",
        help="REST request loop: this tool's own, wrk, or wrk when installed (needs --duration)",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--requests", type=int, help="stop after this many requests")
    amount.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--json", dest="json_path", help="also write the report to this file")
    parser.add_argument("--quiet", action="store_true", help="no live progress line")
    parser.add_argument("--idempotency-keys", action="store_true", help="every create sends a fresh idempotency key")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.concurrency < 1 or args.processes < 1:
        print("--concurrency and --processes must be at least 1", file=sys.stderr)
        return 2
    if args.requests is None and args.duration is None:
        args.duration = 10.0
    plan = Plan(
        scenario=args.scenario,
        transport=args.transport,
        base_url=args.url,
        grpc_target=args.grpc_target,
        concurrency=args.concurrency,
        requests=args.requests,
        duration=args.duration,
        seed_ids=[],
        progress=not args.quiet,
        idempotency_keys=args.idempotency_keys,
        driver=args.driver,
    )
    report = run(plan, args.processes)
    print(format_report(report))
    if args.json_path:
        with open(args.json_path, "w") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    from service.process_exit import run_then_exit

    run_then_exit(main)
