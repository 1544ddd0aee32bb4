"""Where a request's CPU goes: the service's processes by role, and PostgreSQL and Redis.

    python -m benchmarks.cost_split --scenario update                  # PUT, every role
    python -m benchmarks.cost_split --scenario create --roles http     # POST, HTTP role only
    python -m benchmarks.cost_split --scenario create --env COALESCE_MAX_IN_FLIGHT=4

Starts the service on a fresh database, drives one scenario of the load tool (wrk driver, 32
connections, 2 threads) and reads, from /proc, the CPU that each group of processes spent over
the measured run: the HTTP workers, the worker role, the rest of the service (supervisor, gRPC),
every PostgreSQL process and every redis-server on the box, and the load tool itself. Prints
microseconds per request for each. The database and Redis are shared with anything else
running, so run it on a quiet box.
"""

from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path
from typing import Any

import httpx

from benchmarks.load import SEED_ORDERS
from benchmarks.processes import ServiceProcess, children, command_line, cpu_seconds, role_of
from benchmarks.sitting import confirmation_drain, fresh_database
from benchmarks.wrk_driver import run_wrk
from service.config import DEFAULT_REDIS_URL, LOCAL_POSTGRES_ADMIN_URL


def _named(name: str) -> list[int]:
    """Every process on the box whose executable's name is `name`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def groups(service_pid: int) -> dict[str, list[int]]:
    """The service's processes by role (a role process is `orders-service role <role>`, and what it
    starts counts with it), then every PostgreSQL and redis-server process."""
    by_group: dict[str, list[int]] = {"http": [], "worker": [], "rest of service": []}

    def walk(pid: int, group: str) -> None:
        role = role_of(command_line(pid))
        if role in by_group:
            group = role
        by_group[group].append(pid)
        for child in children(pid):
            walk(child, group)

    walk(service_pid, "rest of service")
    by_group["postgres"] = _named("postgres")
    by_group["redis"] = _named("redis-server")
    return by_group


def _seed(base_url: str, count: int) -> list[str]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        return [
            client.post("/orders", json={"product": f"split-{n}", "quantity": 1}).raise_for_status().json()["id"]
            for n in range(count)
        ]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with fresh_database(args.admin_url, f"split_{uuid.uuid4().hex[:8]}") as dsn:
        settings = {"LOG_LEVEL": "WARNING", **args.env}
        service = ServiceProcess(dsn, args.redis_url, args.roles, settings, name="split")
        service.start(wait_for_grpc="grpc" in args.roles, timeout=60)
        try:
            ids = _seed(service.base_url, SEED_ORDERS) if args.scenario in ("get", "update", "mixed") else []
            run_wrk(service.base_url, args.scenario, ids, args.keyed, 32, args.warmup, threads=2)
            if "worker" in args.roles:
                confirmation_drain(dsn)  # what came before is confirmed, so its work is not counted
            members = groups(service.pid)
            before = {name: cpu_seconds(pids) for name, pids in members.items()}
            own = os.times()
            report = run_wrk(service.base_url, args.scenario, ids, args.keyed, 32, args.seconds, threads=2)
            if "worker" in args.roles:
                confirmation_drain(dsn)  # the pipeline's share of this run's orders counts too
            after_own = os.times()
            used = {name: cpu_seconds(pids) - before[name] for name, pids in members.items()}
            used["load tool"] = (after_own.children_user - own.children_user) + (
                after_own.children_system - own.children_system
            )
        finally:
            service.stop(timeout=30)
    served = int(report["ok"])  # type: ignore[call-overload]
    return {
        "scenario": args.scenario,
        "roles": args.roles,
        "rps": round(served / float(report["seconds"])),  # type: ignore[arg-type]
        "errors": report["errors"],
        "us_per_request": {name: round(seconds / served * 1e6) for name, seconds in used.items()} if served else {},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="update", choices=("get", "create", "update", "mixed", "list"))
    parser.add_argument("--keyed", action="store_true", help="creates carry an Idempotency-Key")
    parser.add_argument("--roles", default="http,grpc,worker")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL", LOCAL_POSTGRES_ADMIN_URL))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a setting for the service (repeatable)"
    )
    args = parser.parse_args(argv)
    args.env = dict(item.split("=", 1) for item in args.env)
    figures = measure(args)
    print(f"{figures['scenario']} ({figures['roles']}): {figures['rps']:,} req/s, {figures['errors']} errors")
    total = 0
    for name, micros in figures["us_per_request"].items():
        total += micros
        print(f"  {name:<16} {micros:>6} us/request")
    print(f"  {'total':<16} {total:>6} us/request")
    return 0


if __name__ == "__main__":
    from service.process_exit import run_then_exit

    run_then_exit(main)
