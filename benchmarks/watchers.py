"""Watchers of the change feed under load (issue 19): every change delivered, how fast, at what cost.

    python -m benchmarks.watchers                                  # the issue's scale: 1000 SSE, 200 gRPC, 1000/s
    python -m benchmarks.watchers --sse 100 --grpc 20 --rate 200 --duration 10
    python -m benchmarks.watchers --sse 300 --grpc 60 --cost       # req/s with and without watchers

Starts `orders-service serve` with every role on a fresh database and a stream of its own
(HTTP_WORKERS=1 and GRPC_WORKERS=1 unless `--http-workers`: every SSE watcher on one HTTP
process, every gRPC watcher on one gRPC process), opens `--sse` watchers of GET /orders/changes
(raw sockets) and `--grpc` WatchOrders streams (grpc.aio, `--streams-per-channel` per channel),
spread over `--sse-processes` and `--grpc-processes` client processes (benchmarks.watch_clients).
A readiness barrier (one order, seen by every watcher) proves each watcher subscribed; the
stream's last entry then is the gate. Then:

- default mode: creates at `--rate` per second for `--duration` seconds, open loop, from a
  process of its own (benchmarks.open_loop); once the pipeline has drained (no order pending, no
  outbox row unpublished) the stream's entries after the gate are what each watcher must have
  received, each once, in order: every watcher's count and CRC of its cursor sequence is checked
  against them. Latency of the timed watchers (`--timed` per kind): receipt minus the order's
  `updated_at`, for the `order.created` and the consumer's `order.updated` (confirmed) alike.
- `--cost`: the load tool's REST GET, REST POST (wrk) and gRPC GetOrder runs without watchers,
  with the watchers attached (and receiving every change those runs make), and without again
  (drift check), all on the same service; then the same delivery check.

Reported: per watcher kind, watchers receiving exactly every change, missing/extra, streams
ended early (and why), latency p50/p90/p99/max; achieved create rate and its latency; RSS of
every process of the service (idle before the watchers, max while they run, via /proc); CPU
(cores busy) of each process, the clients and the whole box. Prints markdown, writes `--json`.
`--profile N` records N s of py-spy of every service process during the creates (raw collapsed
stacks under profiles/, through the admin port).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import redis

from benchmarks import open_loop
from benchmarks.database import fetch_rows
from benchmarks.processes import ServiceProcess, cpu_seconds, rss_kib
from benchmarks.sitting import fresh_database, grpc_load, load
from benchmarks.soak import processes
from benchmarks.watch_clients import ClientPlan, client_process
from benchmarks.watch_report import markdown, merge_kind
from service.config import DEFAULT_REDIS_URL, LOCAL_POSTGRES_ADMIN_URL

COST_RUNS = (("REST GET /orders/{id}", "rest", "get"), ("REST POST /orders", "rest", "create"))
COST_RUNS_GRPC = (("gRPC GetOrder", "grpc", "get"),)
DRAIN_TIMEOUT = 60.0
BARRIER_TRIES = 3


def box_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / ticks, sum(fields[:8]) / ticks


class RssSampler(threading.Thread):
    """The largest RSS each process of the service reached, sampled every `interval` s."""

    def __init__(self, supervisor: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.supervisor = supervisor
        self.interval = interval
        self.peak: dict[str, int] = {}
        self.pids: dict[str, int] = {}
        self._halt = threading.Event()

    def sample(self) -> dict[str, int]:
        self.pids = processes(self.supervisor)
        now = {name: rss_kib(pid) for name, pid in self.pids.items()}
        for name, kib in now.items():
            self.peak[name] = max(self.peak.get(name, 0), kib)
        return now

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()


class Clients:
    """The watcher client processes and the pipes that command them."""

    def __init__(self, args: argparse.Namespace, service: ServiceProcess) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.members: list[tuple[multiprocessing.process.BaseProcess, Connection, ClientPlan]] = []
        for kind, total, count in (("sse", args.sse, args.sse_processes), ("grpc", args.grpc, args.grpc_processes)):
            for index in range(count if total else 0):
                share = total // count + (1 if index < total % count else 0)
                timed = args.timed // count + (1 if index < args.timed % count else 0)
                plan = ClientPlan(kind, share, min(share, timed), service.base_url, service.grpc_target)
                ours, theirs = ctx.Pipe()
                process = ctx.Process(target=client_process, args=(plan, theirs), daemon=True)
                process.start()
                self.members.append((process, ours, plan))

    @property
    def pids(self) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for process, _, plan in self.members:
            assert process.pid is not None
            found.setdefault(f"clients {plan.kind}", []).append(process.pid)
        return found

    def ask(self, *command: Any, timeout: float = 60.0) -> list[Any]:
        for _, pipe, _ in self.members:
            pipe.send(command)
        replies = []
        for process, pipe, plan in self.members:
            if not pipe.poll(timeout):
                raise RuntimeError(f"{plan.kind} client {process.pid} did not answer {command[0]!r}")
            replies.append(pipe.recv())
        return replies

    def wait(self, done: Callable[[dict[str, int], ClientPlan], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(done(s, m[2]) for s, m in zip(self.ask("status"), self.members, strict=True)):
                return True
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        for process, pipe, _ in self.members:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)
            pipe.close()


def stream_info(client: redis.Redis, stream: str) -> tuple[str, int]:
    """(last-generated-id, entries-added) of the stream."""
    info: dict[str, Any] = client.xinfo_stream(stream)
    last = info["last-generated-id"]
    return (last.decode() if isinstance(last, bytes) else str(last)), int(info["entries-added"])


def expected(client: redis.Redis, stream: str, after: str, until: str) -> dict[str, Any]:
    """Count, cursor-sequence CRC and event kinds of the entries in (after, until]."""
    crc, count, events = 0, 0, Counter[str]()
    start = f"({after}"
    while True:
        page: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream, min=start, max=until, count=10_000)  # type: ignore[assignment]
        if not page:
            break
        crc = zlib.crc32(b"".join(raw + b"\n" for raw, _ in page), crc)
        count += len(page)
        events.update(fields.get(b"event", b"?").decode() for _, fields in page)
        start = f"({page[-1][0].decode()}"
    return {"count": count, "crc": crc, "events": dict(events)}


def quiet(dsn: str) -> bool:
    """No order waiting for its confirmation and no outbox row waiting for the relay (one snapshot)."""
    rows = asyncio.run(
        fetch_rows(
            dsn,
            "SELECT (SELECT count(*) FROM orders WHERE status = 'pending')"
            " + (SELECT count(*) FROM outbox WHERE published_at IS NULL)",
        )
    )
    return int(rows[0][0]) == 0


def drain(dsn: str) -> float:
    """Seconds until the pipeline has published everything (DRAIN_TIMEOUT at most)."""
    started = time.monotonic()
    while not quiet(dsn) and time.monotonic() - started < DRAIN_TIMEOUT:
        time.sleep(0.1)
    return round(time.monotonic() - started, 2)


def barrier(service: ServiceProcess, dsn: str, client: redis.Redis, clients: Clients) -> str:
    """One order every watcher receives proves every watcher subscribed; returns the gate cursor."""
    for _ in range(BARRIER_TRIES):
        httpx.post(f"{service.base_url}/orders", json={"product": "barrier", "quantity": 1}, timeout=10)
        if clients.wait(lambda s, plan: s["before"] + s["ended"] >= plan.watchers, timeout=15):
            break
    else:
        raise RuntimeError("not every watcher received the barrier order")
    drain(dsn)
    return stream_info(client, service.stream)[0]


def cost_runs(service: ServiceProcess, args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    runs = COST_RUNS + (COST_RUNS_GRPC if args.cost_grpc else ())
    for label, transport, scenario in runs:
        if transport == "rest":
            report = load(service.base_url, scenario, [], args.cost_seconds, args.cost_warmup)
        else:
            report = grpc_load(service.grpc_target, scenario, args.cost_seconds, args.cost_warmup)
        figures[label] = {
            "rps": report["throughput_rps"],
            "p99_ms": report["latency_ms"].get("p99"),
            "errors": report["error_count"],
        }
        print(f"  {label}: {figures[label]}", flush=True)
    return figures


def record_profile(service: ServiceProcess, seconds: int, path: Path) -> threading.Thread:
    """py-spy of every process of the service (the admin port, raw collapsed stacks) into `path`,
    starting a second into the load."""

    def run() -> None:
        time.sleep(1.0)
        url = f"http://127.0.0.1:{service.pprof_port}/debug/pprof/profile"
        answer = httpx.get(url, params={"seconds": seconds, "format": "raw"}, timeout=seconds + 90)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(answer.content)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def cpu_window(groups: dict[str, list[int]]) -> Callable[[], dict[str, Any]]:
    """Starts measuring; the returned function gives each group's CPU seconds and cores busy since then."""
    started = time.monotonic()
    before = {name: cpu_seconds(pids) for name, pids in groups.items()}
    box = box_busy()

    def cores() -> dict[str, Any]:
        seconds = time.monotonic() - started
        used = {name: round(cpu_seconds(pids) - before[name], 2) for name, pids in groups.items()}
        busy, total = box_busy()
        busy_cores = {name: round(cpu / seconds, 2) for name, cpu in used.items()}
        busy_cores["whole box"] = round((busy - box[0]) / (total - box[1]) * (os.cpu_count() or 1), 2)
        return {"window_s": round(seconds, 2), "cpu_s": used, "cores": busy_cores}

    return cores


def measure(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    env = {
        "LOG_LEVEL": "WARNING",
        "HTTP_WORKERS": str(args.http_workers),
        "GRPC_WORKERS": "1",
        "HTTP_BACKPRESSURE": str(max(1024, args.sse + 1024)),  # room for the load beside the watchers
        "GRPC_MAX_CONCURRENT_RPCS": str(max(256, args.grpc + 256)),
        **args.env,
    }
    service = ServiceProcess(dsn, args.redis_url, "http,grpc,worker", env, name="watchers")
    store = redis.Redis.from_url(args.redis_url)
    result: dict[str, Any] = {"service_env": env, "service_log": service.log_file.name}
    service.start(wait_for_grpc=True, timeout=60)
    sampler = RssSampler(service.pid)
    clients: Clients | None = None
    try:
        time.sleep(1.0)  # every process up
        result["rss_idle_kib"] = sampler.sample()
        sampler.start()
        if args.cost:
            result["cost_without"] = cost_runs(service, args)
        clients = Clients(args, service)
        if not clients.wait(lambda s, plan: s["connected"] + s["ended"] >= plan.watchers, timeout=120):
            raise RuntimeError("the watchers did not all connect")
        gate = barrier(service, dsn, store, clients)
        result["rss_attached_kib"] = sampler.sample()
        clients.ask("go", gate)
        groups = {name: [pid] for name, pid in sampler.pids.items()} | clients.pids
        if args.cost:
            cores = cpu_window(groups)
            result["cost_with"] = cost_runs(service, args)
        else:
            ours, theirs = multiprocessing.get_context("spawn").Pipe()
            driver = multiprocessing.get_context("spawn").Process(
                target=open_loop.run_in_process, args=(service.base_url, args.rate, args.duration, theirs)
            )
            driver.start()
            cores = cpu_window(groups)
            profiling = None
            if args.profile:
                result["profile"] = f"profiles/watchers-{time.strftime('%Y%m%dT%H%M%S')}.txt"
                profiling = record_profile(service, args.profile, Path(result["profile"]))
            if not ours.poll(args.duration + 90):
                raise RuntimeError("the create driver did not report")
            result["creates"] = ours.recv()
            driver.join(10)
            result["creates"]["cores_busy"] = round(result["creates"]["cpu_s"] / result["creates"]["seconds"], 2)
            if profiling is not None:
                profiling.join(args.profile + 90)
        result["cpu"] = cores()
        result["rss_end_kib"] = sampler.sample()
        result["drained_after_s"] = drain(dsn)
        last = stream_info(store, service.stream)[0]
        want = expected(store, service.stream, gate, last)
        result["stream"] = want
        reports = clients.ask(
            "end", last, want["count"], want["crc"], args.tail_timeout, timeout=args.tail_timeout + 30
        )
        result["watchers"] = {kind: merge_kind([r for r in reports if r["kind"] == kind]) for kind in ("sse", "grpc")}
        clients.stop()
        clients = None
        if args.cost:
            result["cost_after"] = cost_runs(service, args)
        result["rss_peak_kib"] = dict(sampler.peak)
    finally:
        service.stop(timeout=30)
        if clients is not None:
            clients.stop()
        if sampler.is_alive():
            sampler.stop()
        store.delete(service.stream, f"{service.stream}.dlq")
        store.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sse", type=int, default=1000, help="SSE watchers (GET /orders/changes)")
    parser.add_argument("--grpc", type=int, default=200, help="gRPC WatchOrders watchers")
    parser.add_argument("--rate", type=float, default=1000.0, help="creates per second (open loop)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of creates")
    parser.add_argument("--timed", type=int, default=100, help="watchers per kind that time every change")
    parser.add_argument("--sse-processes", type=int, default=2)
    parser.add_argument("--grpc-processes", type=int, default=1)
    parser.add_argument("--http-workers", type=int, default=1)
    parser.add_argument("--tail-timeout", type=float, default=30.0, help="seconds the watchers may take to catch up")
    parser.add_argument("--profile", type=int, metavar="SECONDS", help="py-spy every service process meanwhile")
    parser.add_argument("--cost", action="store_true", help="measure req/s without, with and again without watchers")
    parser.add_argument("--cost-seconds", type=float, default=5.0)
    parser.add_argument("--cost-warmup", type=float, default=1.0)
    parser.add_argument("--no-cost-grpc", dest="cost_grpc", action="store_false", help="skip gRPC GetOrder in --cost")
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL", LOCAL_POSTGRES_ADMIN_URL))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--json", dest="json_path", default="benchmarks/watchers-latest.json")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="a service setting")
    args = parser.parse_args(argv)
    args.env = dict(item.split("=", 1) for item in args.env)
    if args.sse_processes < 1 or args.grpc_processes < 1:
        parser.error("--sse-processes and --grpc-processes must be at least 1")
    figures: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "settings": {k: v for k, v in vars(args).items() if k not in ("admin_url", "redis_url", "json_path")},
    }
    with fresh_database(args.admin_url, f"watchers_{uuid.uuid4().hex[:8]}") as dsn:
        figures.update(measure(args, dsn))
    with open(args.json_path, "w") as out:
        json.dump(figures, out, indent=2)
    print(markdown(figures))
    return 0


if __name__ == "__main__":
    from service.process_exit import run_then_exit

    run_then_exit(main)
