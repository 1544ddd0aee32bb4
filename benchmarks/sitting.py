"""One sitting, side by side: this service (every role, and `ROLES=http`) against a peer, and its
gRPC against a bare grpc.aio echo server, each on a fresh database, one after the other.

    python -m benchmarks.sitting --peer-url http://127.0.0.1:18010      # REST vs a running peer
    python -m benchmarks.sitting --only grpc                            # gRPC vs the bare echo

REST scenarios run through the project's load tool with its wrk driver (32 connections, 2
threads, `--seconds` after `--warmup`). After the create run of the every-role service it reports
how many orders were still pending when the load stopped and how long the pipeline took to
confirm them, and the CPU per request of the service's processes (from /proc). gRPC GetOrder and
CreateOrder are driven by h2load (8 connections x 4 streams, 1 thread) at the service (roles
http,grpc, HTTP_WORKERS=1, GRPC_WORKERS 1 and 2) and at `benchmarks.grpc_echo`, plain and with
its initial metadata sent in a batch of its own as the service must (`--initial-metadata`); each h2load run is
checked with one real call first, since h2load counts a gRPC error (it comes in the trailers) as
a success; the load tool's gRPC transport drives both calls too. The peer is started by the
caller (see ../shared/peers/README.md); its database should be fresh too. Prints markdown;
`--json` writes every figure. `--rounds N` runs the REST half N times, alternating which of the
peer, the every-role service and `ROLES=http` goes first, and reports each figure from the round
with the median req/s, with every round's req/s listed under the table: on a shared box one
round's ratios can be off by a third.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx

from benchmarks import h2load as h2load_tool
from benchmarks.database import admin_sql, fetch_rows
from benchmarks.processes import ServiceProcess, cpu_seconds, descendants, free_port
from service.config import DEFAULT_REDIS_URL, LOCAL_POSTGRES_ADMIN_URL, with_database

REST_SCENARIOS: list[tuple[str, str, list[str]]] = [
    # (label, load-tool scenario, extra arguments)
    ("GET /orders/{id}", "get", []),
    ("POST /orders", "create", []),
    ("POST /orders with Idempotency-Key", "create", ["--idempotency-keys"]),
    ("PUT /orders/{id}", "update", []),
    ("mixed 40/30/20/10", "mixed", []),
]
PEER_SCENARIOS = {"get", "create", "update", "mixed"}


def load(url: str, scenario: str, extra: list[str], seconds: float, warmup: float) -> dict[str, Any]:
    """One warm-up run and one measured run of the load tool (wrk driver)."""
    base = [sys.executable, "-m", "benchmarks.load", "--scenario", scenario, "--driver", "wrk", "--url", url]
    base += ["--concurrency", "32", "--processes", "2", "--quiet", *extra]
    subprocess.run([*base, "--duration", str(warmup)], check=True, capture_output=True)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([*base, "--duration", str(seconds), "--json", out.name], check=True, capture_output=True)
        report: dict[str, Any] = json.loads(Path(out.name).read_text())
    return report


@contextmanager
def fresh_database(admin_url: str, name: str) -> Iterator[str]:
    asyncio.run(admin_sql(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"))
    try:
        yield with_database(admin_url, name)
    finally:
        asyncio.run(admin_sql(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def pending(dsn: str) -> int:
    return int(asyncio.run(fetch_rows(dsn, "SELECT count(*) FROM orders WHERE status = 'pending'"))[0][0])


def confirmation_drain(dsn: str, timeout: float = 60.0) -> dict[str, Any]:
    """Orders still pending when the load stopped, and how long until none is."""
    started = time.monotonic()
    left_at_end = pending(dsn)
    left = left_at_end
    while left and time.monotonic() - started < timeout:
        time.sleep(0.1)
        left = pending(dsn)
    return {"pending_at_end": left_at_end, "confirmed_all_after_s": round(time.monotonic() - started, 2), "left": left}


def rest_service(args: argparse.Namespace, roles: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with fresh_database(args.admin_url, f"sitting_{uuid.uuid4().hex[:8]}") as dsn:
        service = ServiceProcess(dsn, args.redis_url, roles, {"LOG_LEVEL": "WARNING", **args.env}, name="sitting")
        service.start(wait_for_grpc="grpc" in roles, timeout=60)
        try:
            for label, scenario, extra in REST_SCENARIOS:
                pids = [service.pid, *descendants(service.pid)]
                before = cpu_seconds(pids)
                report = load(service.base_url, scenario, extra, args.seconds, args.warmup)
                used = cpu_seconds(pids) - before
                figures: dict[str, Any] = {
                    "rps": report["throughput_rps"],
                    "errors": report["error_count"],
                    "p99_ms": report["latency_ms"].get("p99"),
                }
                served = report["throughput_rps"] * report["seconds"]
                figures["cpu_us_per_request"] = round(used / served * 1e6) if served else None
                if scenario == "create" and not extra and "worker" in roles:
                    figures["pipeline"] = confirmation_drain(dsn)
                results[label] = figures
                print(f"  {roles}: {label}: {figures}", file=sys.stderr)
        finally:
            service.stop(timeout=30)
    return results


def rest_peer(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, scenario, extra in REST_SCENARIOS:
        if scenario not in PEER_SCENARIOS or extra:
            continue
        report = load(args.peer_url, scenario, extra, args.seconds, args.warmup)
        results[label] = {"rps": report["throughput_rps"], "errors": report["error_count"]}
        print(f"  peer: {label}: {results[label]}", file=sys.stderr)
    return results


def grpc_load(target: str, scenario: str, seconds: float, warmup: float) -> dict[str, Any]:
    """The load tool's own gRPC transport (a Python client: it caps lower than h2load on 2 cores)."""
    base = [sys.executable, "-m", "benchmarks.load", "--scenario", scenario, "--transport", "grpc"]
    base += ["--grpc-target", target, "--concurrency", "32", "--processes", "2", "--quiet"]
    subprocess.run([*base, "--duration", str(warmup)], check=True, capture_output=True)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([*base, "--duration", str(seconds), "--json", out.name], check=True, capture_output=True)
        report: dict[str, Any] = json.loads(Path(out.name).read_text())
    return report


def h2load(target: str, method: str, message: bytes, seconds: float) -> dict[str, Any]:
    figures = h2load_tool.run(target, method, message, seconds)
    return {"calls_per_s": figures["calls_per_s"], "errors": figures["errors"]}


def grpc_messages(target: str) -> dict[str, bytes]:
    """A GetOrder of an existing order and a CreateOrder, each checked with one real call."""
    from service.grpc.pb import orders_pb2, orders_pb2_grpc

    create = orders_pb2.CreateOrderRequest(product="h2load", quantity=1)
    with grpc.insecure_channel(target) as channel:
        stub = orders_pb2_grpc.OrderServiceStub(channel)
        created = stub.CreateOrder(create, timeout=10)
        get = orders_pb2.GetOrderRequest(id=created.order.id)
        stub.GetOrder(get, timeout=10)
    return {
        "orders.OrderService/GetOrder": get.SerializeToString(),
        "orders.OrderService/CreateOrder": create.SerializeToString(),
    }


def grpc_service(args: argparse.Namespace, workers: int, messages: dict[str, bytes] | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with fresh_database(args.admin_url, f"sitting_{uuid.uuid4().hex[:8]}") as dsn:
        env = {"LOG_LEVEL": "WARNING", **args.env, "HTTP_WORKERS": "1", "GRPC_WORKERS": str(workers)}
        service = ServiceProcess(dsn, args.redis_url, "http,grpc", env, name="sitting")
        service.start(wait_for_grpc=True, timeout=60)
        try:
            time.sleep(1.0)  # every gRPC process listening
            checked = grpc_messages(service.grpc_target)
            for method, message in checked.items():
                h2load(service.grpc_target, method, message, args.warmup)
                pids = [service.pid, *descendants(service.pid)]
                before = cpu_seconds(pids)
                figures = h2load(service.grpc_target, method, message, args.seconds)
                calls = figures["calls_per_s"] * args.seconds
                figures["cpu_us_per_call"] = round((cpu_seconds(pids) - before) / calls * 1e6) if calls else None
                results[method.rsplit("/", 1)[1]] = figures
                print(f"  grpc x{workers}: {method}: {figures}", file=sys.stderr)
            for name, scenario in (("GetOrder", "get"), ("CreateOrder", "create")):
                report = grpc_load(service.grpc_target, scenario, args.seconds, args.warmup)
                results[f"{name} (load tool)"] = {
                    "calls_per_s": report["throughput_rps"],
                    "errors": report["error_count"],
                }
        finally:
            service.stop(timeout=30)
    if messages is not None:
        messages.update(checked)
    return results


ECHO_VARIANTS = {
    # name in the figures: extra arguments of benchmarks.grpc_echo
    "echo": [],
    # the service's contract (x-request-id in the initial metadata) costs grpc.aio a batch of its own
    "echo_initial_metadata": ["--initial-metadata"],
}


def grpc_echo(args: argparse.Namespace, messages: dict[str, bytes]) -> dict[str, Any]:
    """The bare grpc.aio echo server, plain and with initial metadata sent as the service does."""
    results: dict[str, Any] = {}
    for name, extra in ECHO_VARIANTS.items():
        port = free_port()
        echo = subprocess.Popen([sys.executable, "-m", "benchmarks.grpc_echo", "--port", str(port), *extra])
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                        grpc.channel_ready_future(channel).result(timeout=1)
                    break
                except grpc.FutureTimeoutError:
                    continue
            method = "orders.OrderService/GetOrder"
            h2load(f"127.0.0.1:{port}", method, messages[method], args.warmup)
            before = cpu_seconds([echo.pid])
            figures = h2load(f"127.0.0.1:{port}", method, messages[method], args.seconds)
            figures["cpu_us_per_call"] = round(
                (cpu_seconds([echo.pid]) - before) / (figures["calls_per_s"] * args.seconds) * 1e6
            )
            results[name] = figures
            print(f"  bare grpc.aio {name}: {figures}", file=sys.stderr)
        finally:
            echo.terminate()
            echo.wait(10)
    return results


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind of run and scenario, the figures of the round with the median req/s (the lower of
    the two middle ones for an even count), with every round's req/s beside them."""
    merged: dict[str, Any] = {}
    for kind in rounds[0]:
        merged[kind] = {}
        for label in rounds[0][kind]:
            runs = sorted((one[kind][label] for one in rounds), key=lambda figures: figures["rps"])
            merged[kind][label] = {**runs[(len(runs) - 1) // 2], "rps_rounds": [run["rps"] for run in runs]}
    return merged


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def markdown(figures: dict[str, Any]) -> str:
    lines: list[str] = []
    rest = figures.get("rest")
    if rest:
        every, http_only, peer = rest.get("every_role", {}), rest.get("http_only", {}), rest.get("peer", {})
        lines += [
            "| scenario | every role req/s | ROLES=http req/s | peer req/s | vs peer | vs ROLES=http "
            "| CPU us/req (every role) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for label, _, _ in REST_SCENARIOS:
            a = every.get(label, {})
            b = http_only.get(label, {})
            c = peer.get(label, {})
            lines.append(
                f"| {label} | {a.get('rps', '-')} | {b.get('rps', '-')} | {c.get('rps', '-')} | "
                f"{ratio(a.get('rps'), c.get('rps'))} | {ratio(a.get('rps'), b.get('rps'))} | "
                f"{a.get('cpu_us_per_request', '-')} |"
            )
        spread = [
            f"{kind} {label}: {', '.join(str(rps) for rps in figures['rps_rounds'])}"
            for kind, runs in (("every role", every), ("ROLES=http", http_only), ("peer", peer))
            for label, figures in runs.items()
            if len(figures.get("rps_rounds", ())) > 1
        ]
        if spread:
            lines.append("\nreq/s of each round (the table: the median round's):\n- " + "\n- ".join(spread))
        keyed = every.get("POST /orders with Idempotency-Key", {}).get("rps")
        plain = every.get("POST /orders", {}).get("rps")
        lines.append(f"\nKeyed POST / unkeyed POST: {ratio(keyed, plain)}")
        pipeline = every.get("POST /orders", {}).get("pipeline")
        if pipeline:
            lines.append(f"Pipeline after the POST run: {pipeline}")
    grpc_figures = figures.get("grpc")
    if grpc_figures:
        echo = grpc_figures.get("echo", {}).get("calls_per_s")
        lines += [
            "",
            "| gRPC call | GRPC_WORKERS | calls/s | vs bare echo | CPU us/call |",
            "|---|---:|---:|---:|---:|",
        ]
        for workers in ("1", "2"):
            for method, value in grpc_figures.get(f"workers_{workers}", {}).items():
                lines.append(
                    f"| {method} | {workers} | {value['calls_per_s']} | {ratio(value['calls_per_s'], echo)} | "
                    f"{value.get('cpu_us_per_call', '-')} |"
                )
        if echo:
            lines.append(f"| bare grpc.aio echo | 1 | {echo} | 1.00 | {grpc_figures['echo'].get('cpu_us_per_call')} |")
        with_metadata = grpc_figures.get("echo_initial_metadata", {})
        if echo and with_metadata:
            lines.append(
                f"| bare echo + initial metadata | 1 | {with_metadata['calls_per_s']} | "
                f"{ratio(with_metadata['calls_per_s'], echo)} | {with_metadata.get('cpu_us_per_call')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-url", help="a running peer's base URL (REST scenarios run against it too)")
    parser.add_argument("--only", choices=("rest", "grpc"), help="run only one half")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--rounds", type=int, default=1, help="REST runs of each kind, alternating which goes first; medians reported"
    )
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL", LOCAL_POSTGRES_ADMIN_URL))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--json", dest="json_path", default="benchmarks/sitting-latest.json")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a setting for the service (repeatable)"
    )
    args = parser.parse_args(argv)
    args.env = dict(item.split("=", 1) for item in args.env)
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is needed (apt-get install wrk nghttp2-client)")
    figures: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count()}
    if args.only in (None, "rest"):
        runs: dict[str, Callable[[], dict[str, Any]]] = {}
        if args.peer_url:
            httpx.get(args.peer_url + "/health", timeout=5).raise_for_status()
            runs["peer"] = lambda: rest_peer(args)
        runs["every_role"] = lambda: rest_service(args, "http,grpc,worker")
        runs["http_only"] = lambda: rest_service(args, "http")
        rounds: list[dict[str, Any]] = []
        for number in range(args.rounds):
            kinds = list(runs) if number % 2 == 0 else list(reversed(runs))  # alternate who goes first
            rounds.append({kind: runs[kind]() for kind in kinds})
        figures["rest"] = median_round(rounds)
    if args.only in (None, "grpc"):
        messages: dict[str, bytes] = {}
        grpc_figures = {"workers_1": grpc_service(args, 1, messages)}
        grpc_figures.update(grpc_echo(args, messages))
        grpc_figures["workers_2"] = grpc_service(args, 2, None)
        figures["grpc"] = grpc_figures
    Path(args.json_path).write_text(json.dumps(figures, indent=2))
    print(markdown(figures))
    return 0


if __name__ == "__main__":
    from service.process_exit import run_then_exit

    run_then_exit(main)
