"""The overload figure of issue 18: DB_POOL_SIZE=2 and 10x the connections the service can serve.

    python -m benchmarks.overload                        # make bench-overload
    python -m benchmarks.overload --serve 8 --env DB_MAX_WAITING=4

Starts the real `orders-service serve` (http role with 2 granian workers, and the worker role
that confirms orders) with DB_POOL_SIZE=2 on a fresh database (dropped afterwards), seeds orders,
then drives REST with a mix of GET by id (60%), GET /orders?limit=20 (10%) and POST (30%) over
keep-alive connections (the load tool's HTTP/1.1 connection, in --client-processes processes):

1. unloaded: --unloaded connections (2) for --seconds: the p99 of that mix;
2. capacity (unless --serve N): 1, 2, 4, ... connections (at most --max-connections, 64: beyond,
   two load processes on a small box measure themselves more than the service), --step-seconds
   each, until throughput stops growing; the connections the service can serve = the fewest
   within 10% of the best;
3. overload: --factor (10) x that many connections for --seconds.

Every response's status and latency is recorded. A connection answered 503 or 429 waits
--reject-pause seconds (0.05: an impatient client that ignores Retry-After) before its next
request. Afterwards every acknowledged create (201) must exist in PostgreSQL and be confirmed
by the worker (within 60 s). The targets: only 2xx / 503 / 429 answers, rejections' p99 <= 50
ms, accepted p99 <= 5 x the unloaded p99, nothing acknowledged lost. Exit 1 when one is missed.
Figures go to --json (benchmarks/overload-latest.json).
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.database import fetch_rows
from benchmarks.load import HttpConnection, _percentile
from benchmarks.processes import ServiceProcess
from service.config import DEFAULT_REDIS_URL, LOCAL_POSTGRES_ADMIN_URL

OPS = ("get", "list", "create")
WEIGHTS = (60, 10, 30)
REJECTED = (503, 429)
CONNECTION_ERROR = 0  # pseudo statuses of requests that got no answer
CLIENT_TIMEOUT = 1
SEED_ORDERS = 200
SERVICE_ENV = {"DB_POOL_SIZE": "2", "HTTP_WORKERS": "2", "LOG_LEVEL": "WARNING"}
TARGET_REJECTED_P99_MS = 50.0
TARGET_ACCEPTED_FACTOR = 5.0

Record = tuple[int, int, float]  # index into OPS, status, seconds


@dataclass
class Phase:
    """What one load process drives: its connections, for how long, from when (time.time())."""

    base_url: str
    connections: int
    seconds: float
    seed_ids: list[str]
    reject_pause: float
    timeout: float
    start_at: float = 0.0


@dataclass
class Measured:
    records: list[Record] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    seconds: float = 0.0
    load_average: float = 0.0  # the machine's 1-minute load average as the phase ended


async def drive(phase: Phase) -> Measured:
    parts = urlsplit(phase.base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    measured = Measured()
    ids = list(phase.seed_ids)
    await asyncio.sleep(max(0.0, phase.start_at - time.time()))
    perf = time.perf_counter
    begun = perf()
    deadline = begun + phase.seconds

    async def connection() -> None:
        conn = HttpConnection(host, port)
        while perf() < deadline:
            op = random.choices(range(len(OPS)), WEIGHTS)[0]
            started = perf()
            payload = b""
            try:
                async with asyncio.timeout(phase.timeout):
                    if OPS[op] == "get":
                        status, payload = await conn.request("GET", f"/orders/{random.choice(ids)}")
                    elif OPS[op] == "list":
                        status, payload = await conn.request("GET", "/orders?limit=20")
                    else:
                        body = b'{"product": "overload", "quantity": %d}' % random.randint(1, 9)
                        status, payload = await conn.request("POST", "/orders", body)
            except TimeoutError:
                status = CLIENT_TIMEOUT
                conn.close()  # its answer may still come: the connection is out of step
            except (OSError, asyncio.IncompleteReadError):
                status = CONNECTION_ERROR
                conn.close()
            measured.records.append((op, status, perf() - started))
            if status == 201:
                order_id = json.loads(payload)["id"]
                measured.created.append(order_id)
                ids.append(order_id)
            elif status in REJECTED:
                await asyncio.sleep(phase.reject_pause)
            elif status < 100:
                await asyncio.sleep(0.01)
        conn.close()

    await asyncio.gather(*(connection() for _ in range(phase.connections)))
    measured.seconds = perf() - begun
    return measured


def _process(phase: Phase, queue: multiprocessing.Queue[Measured]) -> None:
    import uvloop

    queue.put(uvloop.run(drive(phase)))


def run_phase(phase: Phase, processes: int) -> Measured:
    """`phase.connections` spread over up to `processes` load processes, started together."""
    processes = max(1, min(processes, phase.connections))
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[Measured] = ctx.Queue()
    start_at = time.time() + 2.0  # after every process has started and imported this module
    shares = [phase.connections // processes + (i < phase.connections % processes) for i in range(processes)]
    workers = [
        ctx.Process(target=_process, args=(replace(phase, connections=n, start_at=start_at), queue)) for n in shares
    ]
    for worker in workers:
        worker.start()
    merged = Measured()
    for _ in workers:
        part = queue.get()
        merged.records.extend(part.records)
        merged.created.extend(part.created)
        merged.seconds = max(merged.seconds, part.seconds)
    for worker in workers:
        worker.join()
    merged.load_average = os.getloadavg()[0]
    return merged


def summary(measured: Measured, connections: int) -> dict[str, Any]:
    statuses = Counter(status for _, status, _ in measured.records)
    accepted = sorted(s for _, status, s in measured.records if 200 <= status < 300)
    rejected = sorted(s for _, status, s in measured.records if status in REJECTED)
    ms = 1000.0
    return {
        "connections": connections,
        "seconds": round(measured.seconds, 2),
        "load_average": round(measured.load_average, 2),
        "responses": len(measured.records),
        "statuses": {str(status): n for status, n in sorted(statuses.items())},
        "unexpected": sum(n for status, n in statuses.items() if not (200 <= status < 300 or status in REJECTED)),
        "accepted_rps": round(len(accepted) / measured.seconds, 1) if measured.seconds else 0.0,
        "accepted_p50_ms": round(_percentile(accepted, 0.50) * ms, 2),
        "accepted_p99_ms": round(_percentile(accepted, 0.99) * ms, 2),
        "accepted_max_ms": round((accepted[-1] if accepted else 0.0) * ms, 2),
        "rejected": len(rejected),
        "rejected_p50_ms": round(_percentile(rejected, 0.50) * ms, 2),
        "rejected_p99_ms": round(_percentile(rejected, 0.99) * ms, 2),
        "rejected_max_ms": round((rejected[-1] if rejected else 0.0) * ms, 2),
        "per_op_accepted_p99_ms": {
            name: round(
                _percentile(sorted(s for o, st, s in measured.records if o == i and 200 <= st < 300), 0.99) * ms, 2
            )
            for i, name in enumerate(OPS)
        },
    }


def capacity(phase: Phase, args: argparse.Namespace, created: list[str]) -> tuple[int, list[dict[str, Any]]]:
    """The fewest connections whose throughput is within 10% of the best seen, doubling until two
    steps in a row add less than 5%; the orders the steps created are added to `created`."""
    steps: list[dict[str, Any]] = []
    connections, flat = 1, 0
    while connections <= args.max_connections and flat < 2:
        measured = run_phase(replace(phase, connections=connections, seconds=args.step_seconds), args.client_processes)
        created.extend(measured.created)
        step = summary(measured, connections)
        best = max((s["accepted_rps"] for s in steps), default=0.0)
        flat = flat + 1 if step["accepted_rps"] < 1.05 * best else 0
        steps.append(step)
        print(
            f"  capacity: {connections} connections: {step['accepted_rps']} req/s, p99 {step['accepted_p99_ms']} ms",
            file=sys.stderr,
        )
        connections *= 2
    best = max(s["accepted_rps"] for s in steps)
    serve = min(s["connections"] for s in steps if s["accepted_rps"] >= 0.9 * best)
    return serve, steps


def verify(dsn: str, acknowledged: list[str], timeout: float = 60.0) -> dict[str, Any]:
    """Every acknowledged create in PostgreSQL, and confirmed by the worker within `timeout`."""
    ids = [uuid.UUID(i) for i in acknowledged]
    started = time.monotonic()
    while True:
        rows = asyncio.run(
            fetch_rows(dsn, "SELECT status, count(*) FROM orders WHERE id = ANY($1) GROUP BY status", [ids])
        )
        found = {status: int(n) for status, n in rows}
        unconfirmed = sum(n for status, n in found.items() if status != "confirmed")
        if not unconfirmed or time.monotonic() - started > timeout:
            break
        time.sleep(0.5)
    return {
        "acknowledged": len(ids),
        "missing": len(ids) - sum(found.values()),
        "unconfirmed": unconfirmed,
        "checked_after_s": round(time.monotonic() - started, 1),
    }


def targets(unloaded: dict[str, Any], overload: dict[str, Any], lost: dict[str, Any]) -> dict[str, bool]:
    return {
        "only_2xx_503_429": unloaded["unexpected"] == 0 and overload["unexpected"] == 0,
        "rejections_p99_within_50ms": overload["rejected_p99_ms"] <= TARGET_REJECTED_P99_MS,
        "accepted_p99_within_5x_unloaded": overload["accepted_p99_ms"]
        <= TARGET_ACCEPTED_FACTOR * unloaded["accepted_p99_ms"],
        "nothing_acknowledged_lost": lost["missing"] == 0 and lost["unconfirmed"] == 0,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.sitting import fresh_database  # not in the load processes: it imports grpc

    env = {**SERVICE_ENV, **args.env}
    figures: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count()}
    figures["service_env"] = env
    with fresh_database(args.admin_url, f"overload_{uuid.uuid4().hex[:8]}") as dsn:
        service = ServiceProcess(dsn, args.redis_url, "http,worker", env, name="overload")
        service.start(timeout=60)
        try:
            phase = Phase(service.base_url, 1, args.seconds, [], args.reject_pause, args.timeout)
            seed = asyncio.run(_seed(service.base_url))
            phase = replace(phase, seed_ids=seed)
            unloaded = run_phase(replace(phase, connections=args.unloaded), args.client_processes)
            figures["unloaded"] = summary(unloaded, args.unloaded)
            print(f"  unloaded: {figures['unloaded']}", file=sys.stderr)
            acknowledged = seed + unloaded.created
            serve = args.serve
            if serve is None:
                serve, figures["capacity"] = capacity(phase, args, acknowledged)
            figures["serve_connections"] = serve
            loaded = run_phase(replace(phase, connections=args.factor * serve), args.client_processes)
            figures["overload"] = summary(loaded, args.factor * serve)
            print(f"  overload: {figures['overload']}", file=sys.stderr)
            figures["acknowledged"] = verify(dsn, acknowledged + loaded.created)
        finally:
            figures["service_exit"] = service.stop(timeout=30)
            drop_stream(args.redis_url, service.stream)
    figures["targets"] = targets(figures["unloaded"], figures["overload"], figures["acknowledged"])
    return figures


def drop_stream(redis_url: str, stream: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(stream, f"{stream}.dlq")
    finally:
        client.close()


async def _seed(base_url: str) -> list[str]:
    parts = urlsplit(base_url)
    conn = HttpConnection(parts.hostname or "127.0.0.1", parts.port or 80)
    ids = []
    for n in range(SEED_ORDERS):
        status, payload = await conn.request("POST", "/orders", b'{"product": "seed-%d", "quantity": 1}' % n)
        assert status == 201, status
        ids.append(json.loads(payload)["id"])
    conn.close()
    return ids


def report(figures: dict[str, Any]) -> str:
    unloaded, overload, lost = figures["unloaded"], figures["overload"], figures["acknowledged"]
    factor = overload["accepted_p99_ms"] / max(unloaded["accepted_p99_ms"], 1e-9)
    lines = [
        f"overload ({figures['service_env']}), serve = {figures['serve_connections']} connections, "
        f"load average {unloaded['load_average']} (unloaded) / {overload['load_average']} (overload) "
        f"on {figures['cpus']} CPUs",
        f"  unloaded ({unloaded['connections']} conn): {unloaded['accepted_rps']} req/s, "
        f"p50 {unloaded['accepted_p50_ms']} ms, p99 {unloaded['accepted_p99_ms']} ms, statuses {unloaded['statuses']}",
        f"  overload ({overload['connections']} conn): accepted {overload['accepted_rps']} req/s, "
        f"p50 {overload['accepted_p50_ms']} ms, p99 {overload['accepted_p99_ms']} ms ({factor:.1f}x unloaded), "
        f"per op {overload['per_op_accepted_p99_ms']}",
        f"  rejected {overload['rejected']} of {overload['responses']}: p50 {overload['rejected_p50_ms']} ms, "
        f"p99 {overload['rejected_p99_ms']} ms, max {overload['rejected_max_ms']} ms; statuses {overload['statuses']}",
        f"  acknowledged creates {lost['acknowledged']}: missing {lost['missing']}, unconfirmed {lost['unconfirmed']}",
        "  targets: " + ", ".join(f"{name} {'met' if ok else 'MISSED'}" for name, ok in figures["targets"].items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the unloaded and the overload phase")
    parser.add_argument("--step-seconds", type=float, default=4.0, help="length of each capacity step")
    parser.add_argument("--unloaded", type=int, default=2, help="connections of the unloaded phase")
    parser.add_argument("--serve", type=int, help="connections the service can serve (skips the capacity search)")
    parser.add_argument("--factor", type=int, default=10, help="overload = factor x the connections it can serve")
    parser.add_argument("--max-connections", type=int, default=64, help="where the capacity search stops")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--reject-pause", type=float, default=0.05, help="seconds a rejected connection waits")
    parser.add_argument("--timeout", type=float, default=10.0, help="client timeout per request")
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL", LOCAL_POSTGRES_ADMIN_URL))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--json", dest="json_path", default="benchmarks/overload-latest.json")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a setting for the service (repeatable)"
    )
    args = parser.parse_args(argv)
    args.env = dict(item.split("=", 1) for item in args.env)
    figures = measure(args)
    Path(args.json_path).write_text(json.dumps(figures, indent=2))
    print(report(figures))
    return 0 if all(figures["targets"].values()) else 1


if __name__ == "__main__":
    from service.process_exit import run_then_exit

    run_then_exit(main)
