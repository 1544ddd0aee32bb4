"""One run of every figure `benchmarks/RESULTS.md` records, on this machine, in one go.

    python -m benchmarks.results                 # ~4 minutes; prints markdown, writes --json
    python -m benchmarks.results --seconds 10 --rss-seconds 60

It creates a fresh database, measures PostgreSQL's own ceiling with pgbench running the
statements the service runs (8 clients, prepared), starts the real `orders-service serve` (all
roles, `HTTP_WORKERS` 2), then drives every scenario with the project's load tool (a warm-up run,
then the measured run) and finally samples the RSS of every service process after a sustained
mixed run. Service, PostgreSQL and load generator share the machine, as the targets assume.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import h2load
from benchmarks.database import admin_sql
from benchmarks.processes import ServiceProcess, command_line, descendants, rss_kib
from service.config import DEFAULT_REDIS_URL, LOCAL_POSTGRES_ADMIN_URL, with_database

BENCH_DATABASE = "orders_bench"
SEED_ROWS = 10_000
DROP_DATABASE = f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)"
SEED = (
    "INSERT INTO orders (id, product, quantity, status, version, created_at, updated_at) "
    f"SELECT md5(n::text)::uuid, 'seed', 1, 'pending', 1, now(), now() FROM generate_series(1, {SEED_ROWS}) n"
)

SELECT_BY_PK = """\\set n random(1, {rows})
SELECT id, product, quantity, status, version, created_at, updated_at FROM orders WHERE id = md5(:n::text)::uuid;
"""

# The service's create without a key: the order and its outbox row in one statement.
CREATE_ORDER_AND_EVENT = """\
WITH new_order AS (
    INSERT INTO orders (id, product, quantity, status, version, created_at, updated_at)
    VALUES (gen_random_uuid(), 'pgbench', 1, 'pending', 1, now(), now()) RETURNING id
)
INSERT INTO outbox (event_id, event_type, order_id, payload, request_id, traceparent, occurred_at)
SELECT gen_random_uuid(), 'order.created', id,
       '{"id":"x","product":"pgbench","quantity":1,"status":"pending","version":1}'::jsonb, '', NULL, now()
FROM new_order;
"""

LOAD_RUNS: list[tuple[str, str, str, list[str]]] = [
    # (label, transport, scenario, extra load-tool arguments)
    ("REST /health, Python driver (its ceiling)", "rest", "health", ["--driver", "python"]),
    ("REST /health, wrk when installed (its ceiling)", "rest", "health", []),
    ("REST GET /orders/{id}", "rest", "get", []),
    ("REST POST /orders", "rest", "create", []),
    ("REST POST /orders with Idempotency-Key", "rest", "create", ["--idempotency-keys"]),
    ("REST GET /orders (list, 20)", "rest", "list", []),
    ("REST PUT /orders/{id}", "rest", "update", []),
    ("REST mixed", "rest", "mixed", []),
    ("gRPC GetOrder", "grpc", "get", []),
    ("gRPC CreateOrder", "grpc", "create", []),
    ("gRPC mixed", "grpc", "mixed", []),
]


def pgbench(dsn: str, script: str, seconds: int) -> float:
    binary = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
        handle.write(script)
    try:
        out = subprocess.run(
            [binary, "-n", "-M", "prepared", "-c", "8", "-j", "2", "-T", str(seconds), "-f", handle.name, dsn],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    if match is None:
        raise RuntimeError(f"unexpected pgbench output:\n{out}")
    return float(match.group(1))


def h2load_get_order(service: ServiceProcess, seconds: float) -> dict[str, Any] | None:
    """gRPC GetOrder driven by h2load (a compiled HTTP/2 client), when installed.

    The Python gRPC client costs about as much CPU per call as the server, so on two cores it
    caps what the gRPC figure can show; h2load takes it out. Every call asks for the same order.
    """
    if not h2load.installed():
        return None
    from service.grpc.pb import orders_pb2

    created = httpx.post(f"http://127.0.0.1:{service.port}/orders", json={"product": "h2load", "quantity": 1})
    message = orders_pb2.GetOrderRequest(id=created.json()["id"]).SerializeToString()
    figures = h2load.run(service.grpc_target, "orders.OrderService/GetOrder", message, seconds)
    return {
        "label": "gRPC GetOrder, 32 streams on 8 connections",
        "driver": "h2load",
        "throughput_rps": figures["calls_per_s"],
        "latency_ms": {"p50": "-", "p90": f"mean {figures['mean_ms']}", "p99": "-", "max": figures["max_ms"]},
        "error_count": figures["errors"],
    }


def process_rss(pid: int) -> tuple[str, float]:
    arguments = command_line(pid)
    if not arguments:
        return "", 0.0
    return " ".join(arguments), rss_kib(pid) / 1024


def start_service(
    database_url: str, redis_url: str, http_workers: int, extra_env: dict[str, str] | None = None
) -> ServiceProcess:
    """The service with all roles, ready (gRPC included); its first start migrates a fresh database."""
    env = {"HTTP_WORKERS": str(http_workers), "SHUTDOWN_TIMEOUT": "25", **(extra_env or {})}
    service = ServiceProcess(database_url, redis_url, "http,grpc,worker", env, name="results")
    service.start(wait_for_grpc=True, timeout=60.0, ready_path="/ready")
    return service


def service_rss(service: ServiceProcess) -> list[tuple[str, float]]:
    return [process_rss(pid) for pid in [service.pid, *descendants(service.pid)]]


def load(
    service: ServiceProcess, transport: str, scenario: str, extra: list[str], seconds: float, args: argparse.Namespace
) -> dict[str, object]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        path = handle.name
    command = [
        sys.executable, "-m", "benchmarks.load", "--scenario", scenario, "--transport", transport,
        "--url", f"http://127.0.0.1:{service.port}", "--grpc-target", f"127.0.0.1:{service.grpc_port}",
        "--concurrency", str(args.concurrency), "--processes", str(args.processes),
        "--duration", str(seconds), "--quiet", "--json", path, "--driver", "auto", *extra,
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    report: dict[str, Any] = json.loads(Path(path).read_text())
    os.unlink(path)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL", LOCAL_POSTGRES_ADMIN_URL))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds before each scenario")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--processes", type=int, default=1, help="load-tool processes")
    parser.add_argument("--http-workers", type=int, default=2)
    parser.add_argument("--rss-seconds", type=float, default=60.0, help="sustained mixed load before the RSS sample")
    parser.add_argument("--json", dest="json_path", default="benchmarks/results-latest.json")
    args = parser.parse_args(argv)

    database_url = with_database(args.admin_url, BENCH_DATABASE)
    asyncio.run(admin_sql(args.admin_url, DROP_DATABASE, f"CREATE DATABASE {BENCH_DATABASE}"))
    figures: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    service = start_service(database_url, args.redis_url, args.http_workers)  # migrates the fresh database
    try:
        asyncio.run(admin_sql(database_url, SEED, "ANALYZE orders"))
        seconds = int(args.seconds)
        figures["pgbench_select_by_pk_tps"] = pgbench(database_url, SELECT_BY_PK.format(rows=SEED_ROWS), seconds)
        figures["pgbench_create_order_and_event_tps"] = pgbench(database_url, CREATE_ORDER_AND_EVENT, seconds)
        print(f"pgbench select {figures['pgbench_select_by_pk_tps']:.0f} tps", file=sys.stderr)
        print(f"pgbench create {figures['pgbench_create_order_and_event_tps']:.0f} tps", file=sys.stderr)
        runs: list[dict[str, Any]] = []
        for label, transport, scenario, extra in LOAD_RUNS:
            if args.warmup > 0:
                load(service, transport, scenario, extra, args.warmup, args)
            report = load(service, transport, scenario, extra, args.seconds, args)
            report["label"] = label
            runs.append(report)
            print(f"{label}: {summary(report)}", file=sys.stderr)
        h2load = h2load_get_order(service, args.seconds)
        if h2load is not None:
            runs.append(h2load)
            print(f"gRPC GetOrder via h2load: {h2load['throughput_rps']} req/s", file=sys.stderr)
        figures["runs"] = runs
        sustained = load(service, "rest", "mixed", [], args.rss_seconds, args)
        sustained["label"] = f"REST mixed, {args.rss_seconds:.0f} s sustained"
        figures["sustained"] = sustained
        figures["rss_mb"] = [{"cmdline": cmd, "rss_mb": round(mb, 1)} for cmd, mb in service_rss(service) if cmd]
    finally:
        service.stop(timeout=30)
    figures["variants"] = [run_variant(name, env, database_url, args) for name, env in VARIANTS]
    Path(args.json_path).write_text(json.dumps(figures, indent=2))
    print(markdown(figures))
    return 0


# Each switched-off optimisation against the main run, same machine, same run.
VARIANTS: list[tuple[str, dict[str, str]]] = [
    ("pure-Python twins (ORDERS_NATIVE=0)", {"ORDERS_NATIVE": "0"}),
    ("no coalescing (COALESCE_MAX_BATCH=1)", {"COALESCE_MAX_BATCH": "1"}),
]
VARIANT_RUNS = ("REST GET /orders/{id}", "REST POST /orders", "REST mixed")


def run_variant(name: str, env: dict[str, str], database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    service = start_service(database_url, args.redis_url, args.http_workers, env)
    runs: list[dict[str, Any]] = []
    try:
        for label, transport, scenario, extra in LOAD_RUNS:
            if label not in VARIANT_RUNS:
                continue
            if args.warmup > 0:
                load(service, transport, scenario, extra, args.warmup, args)
            report = load(service, transport, scenario, extra, args.seconds, args)
            report["label"] = label
            runs.append(report)
            print(f"{name}, {label}: {summary(report)}", file=sys.stderr)
    finally:
        service.stop(timeout=30)
    return {"name": name, "runs": runs}


def summary(report: dict[str, Any]) -> str:
    return f"{report['throughput_rps']} req/s, p99 {report['latency_ms']['p99']} ms, errors {report['error_count']}"


def machine() -> dict[str, object]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": sys.version.split()[0], "loadavg_at_start": os.getloadavg()}


def yes_no(condition: bool) -> str:
    return "yes" if condition else "no"


def markdown(figures: dict[str, Any]) -> str:
    runs: list[dict[str, Any]] = figures["runs"]
    by_label = {str(r["label"]): r for r in runs}

    def rps(label: str) -> float:
        return float(by_label[label]["throughput_rps"])

    def p99(label: str) -> float:
        return float(by_label[label]["latency_ms"]["p99"])

    lines = [
        f"Machine: {figures['machine']}; run started {figures['started']}.",
        "",
        "| scenario | req/s | p50 ms | p90 ms | p99 ms | max ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in [*runs, figures["sustained"]]:
        lat = r["latency_ms"]
        cells = [
            f"{r['label']} [{r.get('driver', 'python')}]",
            f"{r['throughput_rps']:,}",
            lat["p50"],
            lat["p90"],
            lat["p99"],
            lat["max"],
            r["error_count"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    select_tps = float(figures["pgbench_select_by_pk_tps"])
    create_tps = float(figures["pgbench_create_order_and_event_tps"])
    get, post, mixed = rps("REST GET /orders/{id}"), rps("REST POST /orders"), rps("REST mixed")
    grpc_get = rps("gRPC GetOrder")
    get_p99, post_p99 = p99("REST GET /orders/{id}"), p99("REST POST /orders")
    worst_rss = max((float(p["rss_mb"]) for p in figures["rss_mb"]), default=0.0)
    targets = [
        ("GET by id vs pgbench select", ">= 40%", f"{get / select_tps:.0%}", get >= 0.4 * select_tps),
        ("GET p99", "< 25 ms", f"{get_p99} ms", get_p99 < 25),
        ("POST vs pgbench create", ">= 50%", f"{post / create_tps:.0%}", post >= 0.5 * create_tps),
        ("POST p99", "< 40 ms", f"{post_p99} ms", post_p99 < 40),
        ("mixed", ">= 3,500 req/s", f"{mixed:,.0f} req/s", mixed >= 3500),
        ("gRPC GetOrder vs REST GET", ">= 50%", f"{grpc_get / get:.0%}", grpc_get >= 0.5 * get),
        ("RSS of each process after sustained mixed", "< 100 MB", f"max {worst_rss} MB", worst_rss < 100),
    ]
    lines += [
        "",
        f"pgbench (8 clients, prepared, the service's statements): select by primary key {select_tps:,.0f} TPS; "
        f"create order + outbox row {create_tps:,.0f} TPS.",
        "",
        "| target | goal | measured | met |",
        "|---|---|---|---|",
        *(f"| {name} | {goal} | {measured} | {yes_no(met)} |" for name, goal, measured, met in targets),
        "",
        "Switched off, one at a time (same run; req/s and p99 against the main run above):",
        "",
        "| variant | scenario | req/s | vs main | p99 ms |",
        "|---|---|---:|---:|---:|",
        *(
            f"| {variant['name']} | {r['label']} | {r['throughput_rps']:,} | "
            f"{float(r['throughput_rps']) / rps(r['label']) - 1:+.0%} | {r['latency_ms']['p99']} |"
            for variant in figures.get("variants", [])
            for r in variant["runs"]
        ),
        "",
        "| process | RSS MB |",
        "|---|---:|",
        *(f"| `{p['cmdline'][:90]}` | {p['rss_mb']} |" for p in figures["rss_mb"]),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    from service.process_exit import run_then_exit

    run_then_exit(main)
