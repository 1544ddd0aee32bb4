"""Soak test: the real service (http, grpc and worker roles) under sustained mixed REST + gRPC load.

    python -m benchmarks.soak                      # 10 minutes (SOAK_SECONDS overrides)
    python -m benchmarks.soak --seconds 60         # the CI version

Every --interval seconds (10) it records, per transport, the requests and errors of that interval
and their p99, and the RSS of every process of the service (supervisor, role processes, granian
workers). It fails (exit 1) on any error, on a service process that died or was replaced, on an
event pipeline that did not drain at the end, or on any process whose RSS grew more than
--max-rss-growth (10%) between the end of the warm-up and the end of the run.

PostgreSQL and Redis: DATABASE_URL / REDIS_URL, else the local servers, else embedded ones; the
run uses a schema and a stream of its own and removes both afterwards. The load is the project's
load tool (benchmarks.load, its Python drivers, scenario `mixed`) run in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import uvloop

from benchmarks.database import admin_sql, fetch_rows, with_search_path
from benchmarks.load import Plan, Shard, _percentile, _run_shard, _seed
from benchmarks.processes import ServiceProcess, children, command_line, role_of, rss_kib

DEFAULT_SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))


SOAK_ENV = {
    "WORKER_PROCESSES": "1",
    "SHUTDOWN_TIMEOUT": "25",  # the service's default
    "LOG_LEVEL": "WARNING",  # an access line per request would be most of the work
}


def events_figures(service: ServiceProcess) -> dict[str, Any]:
    figures: dict[str, Any] = httpx.get(f"{service.base_url}/metrics/events", timeout=5).json()
    return figures


def clean_up(base_dsn: str, schema: str, redis_url: str, stream: str) -> None:
    """Drop the run's schema and stream."""
    try:
        asyncio.run(admin_sql(base_dsn, f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        import redis

        client = redis.Redis.from_url(redis_url)
        client.delete(stream, f"{stream}.dlq")
        client.close()
    except Exception as exc:  # cleanup only
        print(f"soak: cleanup failed: {exc!r}", file=sys.stderr)


def processes(supervisor: int) -> dict[str, int]:
    """name -> pid of every process of the service."""
    found = {"supervisor": supervisor}
    for pid in children(supervisor):
        args = command_line(pid)
        if not args:
            continue
        role = role_of(args) or f"pid{pid}"
        found[role] = pid
        for index, worker in enumerate(sorted(children(pid)), 1):
            found[f"{role}-worker-{index}"] = worker
    return found


class Sampler:
    """Per interval: requests, errors and p99 of each transport; RSS of every service process."""

    def __init__(self, service: ServiceProcess, shards: dict[str, Shard], interval: float) -> None:
        self.service = service
        self.shards = shards
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._seen = {name: (0, 0) for name in shards}
        self.started = time.monotonic()

    def take(self) -> dict[str, Any]:
        sample: dict[str, Any] = {"t": round(time.monotonic() - self.started, 1)}
        for name, shard in self.shards.items():
            done, failed = self._seen[name]
            latencies = sorted(shard.latencies[done:])
            errors = sum(shard.errors.values())
            self._seen[name] = (done + len(latencies), errors)
            sample[name] = {
                "requests": len(latencies) + errors - failed,
                "errors": errors - failed,
                "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
            }
        sample["rss_kib"] = {name: rss_kib(pid) for name, pid in processes(self.service.pid).items()}
        sample["pids"] = processes(self.service.pid)
        self.samples.append(sample)
        line = "  ".join(
            f"{name} {sample[name]['requests']} req {sample[name]['errors']} err p99 {sample[name]['p99_ms']} ms"
            for name in self.shards
        )
        total_mib = sum(sample["rss_kib"].values()) / 1024
        print(f"[{sample['t']:>6} s] {line}  RSS {total_mib:.0f} MiB", file=sys.stderr, flush=True)
        return sample


async def drive(service: ServiceProcess, args: argparse.Namespace) -> tuple[Sampler, dict[str, Shard]]:
    common = {
        "scenario": "mixed",
        "base_url": f"http://127.0.0.1:{service.port}",
        "grpc_target": f"127.0.0.1:{service.grpc_port}",
        "requests": None,
        "duration": args.seconds,
        "seed_ids": [],
        "progress": False,
    }
    seed = await _seed(Plan(transport="rest", concurrency=1, **common))  # type: ignore[arg-type]
    common["seed_ids"] = seed
    plans = {
        "rest": Plan(transport="rest", concurrency=args.rest_concurrency, **common),  # type: ignore[arg-type]
        "grpc": Plan(transport="grpc", concurrency=args.grpc_concurrency, **common),  # type: ignore[arg-type]
    }
    shards = {name: Shard() for name in plans}
    sampler = Sampler(service, shards, args.interval)
    runs = [asyncio.ensure_future(_run_shard(plans[name], None, shards[name])) for name in plans]
    next_at = sampler.started + args.interval
    while not all(run.done() for run in runs):
        await asyncio.wait(runs, timeout=max(0.0, next_at - time.monotonic()))
        if time.monotonic() >= next_at - 0.05:
            sampler.take()
            next_at += args.interval
    for run in runs:
        run.result()
    if time.monotonic() - sampler.started > (sampler.samples[-1]["t"] if sampler.samples else 0) + 1:
        sampler.take()  # the tail of the run
    return sampler, shards


def verdict(sampler: Sampler, shards: dict[str, Shard], args: argparse.Namespace) -> dict[str, Any]:
    samples = sampler.samples
    failures: list[str] = []
    errors = {name: dict(shard.errors) for name, shard in shards.items()}
    if any(errors.values()):
        failures.append(f"errors: {errors}")
    after_warmup = [s for s in samples if s["t"] >= args.warmup - 0.5]
    if len(after_warmup) < 2:
        failures.append("too few samples after the warm-up to judge RSS growth")
        baseline = end = samples[-1] if samples else {"rss_kib": {}, "pids": {}}
    else:
        baseline, end = after_warmup[0], after_warmup[-1]
    rss: dict[str, dict[str, Any]] = {}
    for name, start_kib in baseline["rss_kib"].items():
        end_kib = end["rss_kib"].get(name, 0)
        growth = (end_kib - start_kib) / start_kib if start_kib else 0.0
        rss[name] = {"start_mib": round(start_kib / 1024, 1), "end_mib": round(end_kib / 1024, 1), "growth": growth}
        if growth > args.max_rss_growth:
            failures.append(f"{name}: RSS grew {growth:.1%} after the warm-up (limit {args.max_rss_growth:.0%})")
    first_pids = samples[0]["pids"] if samples else {}
    replaced = {name for s in samples for name, pid in s["pids"].items() if first_pids.get(name) not in (None, pid)}
    vanished = {name for name in first_pids if samples and name not in samples[-1]["pids"]}
    if replaced or vanished:
        failures.append(f"service processes died or were replaced: {sorted(replaced | vanished)}")
    requests = {name: len(shard.latencies) + sum(shard.errors.values()) for name, shard in shards.items()}
    p99_by_interval = {name: [s[name]["p99_ms"] for s in samples] for name in shards}
    return {
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "interval_s": args.interval,
        "concurrency": {"rest": args.rest_concurrency, "grpc": args.grpc_concurrency},
        "requests": requests,
        "requests_total": sum(requests.values()),
        "errors": errors,
        "error_count": sum(sum(e.values()) for e in errors.values()),
        "p99_ms_by_interval": p99_by_interval,
        "p99_ms_max": {name: max(values, default=0.0) for name, values in p99_by_interval.items()},
        "rss": rss,
        "rss_total_mib": {
            "start": round(sum(baseline["rss_kib"].values()) / 1024, 1),
            "end": round(sum(end["rss_kib"].values()) / 1024, 1),
        },
        "samples": samples,
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="load duration (SOAK_SECONDS)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, help="seconds before the RSS baseline (default: 1/5, 20..60 s)")
    parser.add_argument("--max-rss-growth", type=float, default=0.10, help="allowed RSS growth after the warm-up")
    parser.add_argument("--rest-concurrency", type=int, default=16)
    parser.add_argument("--grpc-concurrency", type=int, default=8)
    parser.add_argument("--http-workers", type=int, default=2)
    parser.add_argument("--json", dest="json_path", default="benchmarks/soak-latest.json")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(60.0, max(20.0, args.seconds / 5))
    if args.seconds < args.warmup + 2 * args.interval:
        parser.error("--seconds must cover the warm-up and at least two intervals after it")

    from service.devservers import resolve_services

    data_dir = Path(tempfile.mkdtemp(prefix="orders-soak-data-"))
    services = resolve_services(
        data_dir,
        database_name="orders_soak",
        database_url=os.environ.get("DATABASE_URL"),
        redis_url=os.environ.get("REDIS_URL"),
        persistent=False,
    )
    schema = f"soak_{uuid.uuid4().hex[:10]}"
    service = ServiceProcess(
        with_search_path(services.database_url, schema),
        services.redis_url,
        "http,grpc,worker",
        {**SOAK_ENV, "HTTP_WORKERS": str(args.http_workers)},
        name="soak",
    )
    drained: dict[str, Any] = {}
    exit_code: int | None = None
    try:
        asyncio.run(admin_sql(services.database_url, f"CREATE SCHEMA {schema}"))
        service.start(wait_for_grpc=True, timeout=60.0, ready_path="/ready", also=lambda pid: len(processes(pid)) >= 6)
        print(
            f"soak: {args.seconds:.0f} s of mixed REST (x{args.rest_concurrency}) + gRPC (x{args.grpc_concurrency}) "
            f"load; warm-up {args.warmup:.0f} s; service log {service.log_file.name}",
            file=sys.stderr,
        )
        sampler, shards = uvloop.run(drive(service, args))
        report = verdict(sampler, shards, args)
        # The worker kept up: the outbox and the stream drain once the load stops.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            drained = events_figures(service)
            if (
                drained["outbox"]["backlog"] == 0
                and drained["stream"]["pending"] == 0
                and drained["stream"]["lag"] == 0
            ):
                break
            time.sleep(0.5)
        else:
            report["failures"].append(f"the event pipeline did not drain within 60 s: {drained}")
        report["events_after"] = drained
        # OUTBOX_RETENTION=0: published rows are deleted, so the table holds at most the backlog.
        rows = asyncio.run(fetch_rows(services.database_url, f"SELECT count(*) FROM {schema}.outbox"))
        report["outbox_rows_after"] = int(rows[0][0])
        if report["outbox_rows_after"] > 0:
            report["failures"].append(f"{report['outbox_rows_after']} outbox rows left after the pipeline drained")
    finally:
        exit_code = service.stop(timeout=40)
        clean_up(services.database_url, schema, services.redis_url, service.stream)
        services.stop()
    if exit_code != 0:
        report["failures"].append(f"the service exited {exit_code} on SIGTERM")
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    Path(args.json_path).write_text(json.dumps(report, indent=2))
    print(summary(report))
    return 1 if report["failures"] else 0


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"soak {report['seconds']:.0f} s: {report['requests_total']} requests "
        f"(REST {report['requests']['rest']}, gRPC {report['requests']['grpc']}), {report['error_count']} errors",
        f"  p99 per {report['interval_s']:.0f} s, ms: REST {report['p99_ms_by_interval']['rest']}",
        f"                        gRPC {report['p99_ms_by_interval']['grpc']}",
        "  RSS after warm-up -> end (MiB): total "
        f"{report['rss_total_mib']['start']} -> {report['rss_total_mib']['end']}",
    ]
    for name, figures in report["rss"].items():
        lines.append(f"    {name:<16} {figures['start_mib']:>7} -> {figures['end_mib']:>7}  ({figures['growth']:+.1%})")
    lines.append("  PASS" if not report["failures"] else "  FAIL: " + "; ".join(report["failures"]))
    return "\n".join(lines)


if __name__ == "__main__":
    from service.process_exit import run_then_exit

    run_then_exit(main)
