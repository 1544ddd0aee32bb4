"""The same REST handlers on granian RSGI, granian ASGI and robyn, measured side by side.

    python -m benchmarks.runtimes                      # ~2 minutes: 5 s per cell, 2 workers each
    python -m benchmarks.runtimes --seconds 10 --rounds 3     # steadier figures on a busy machine
    make bench-runtimes BENCH_RUNTIMES_ARGS="--seconds 15"

It starts every runtime (see benchmarks/runtimes/servers.py) against one fresh database with the
same worker count, drives GET /orders/{id}, POST /orders and GET /health on each in turn with the
project's load tool (`python -m benchmarks.load`; its wrk driver where wrk is installed; with
`--rounds N` every cell N times, interleaved across the runtimes, the median shown), and
samples the CPU time of the server's whole process tree from /proc while the measured run is under
way: CPU per request is that CPU rate divided by the throughput (PostgreSQL's own CPU is not in
it). Then it checks graceful shutdown: a PUT is held in flight inside the handler by a row lock
the benchmark takes in PostgreSQL, the server gets SIGTERM, the lock is released a second later,
and the table says whether the PUT was answered, whether its change was applied, and whether the
server exited (and how soon). The table goes to stdout and to benchmarks/runtimes/LATEST.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psqlpy

from benchmarks.database import admin_sql
from benchmarks.processes import cpu_seconds, descendants
from benchmarks.runtimes.servers import RUNTIMES, RuntimeServer, alive
from benchmarks.wrk_driver import wrk_binary
from service.config import DEFAULT_REDIS_URL, LOCAL_POSTGRES_ADMIN_URL, with_database

DATABASE = "orders_runtimes"
SEED_ROWS = 10_000
SEED = (
    "INSERT INTO orders (id, product, quantity, status, version, created_at, updated_at) "
    f"SELECT md5(n::text)::uuid, 'seed', 1, 'pending', 1, now(), now() FROM generate_series(1, {SEED_ROWS}) n"
)
LOCK_WAITERS = (
    "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
)
SCENARIOS: dict[str, str] = {  # load-tool scenario -> label
    "get": "GET /orders/{id}",
    "create": "POST /orders",
    "health": "GET /health",
}
LATEST = Path(__file__).with_name("LATEST.md")


def fresh_database(admin_url: str) -> str:
    from service.store.migrator import migrate

    database_url = with_database(admin_url, DATABASE)
    asyncio.run(admin_sql(admin_url, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)", f"CREATE DATABASE {DATABASE}"))
    asyncio.run(migrate(database_url))
    # A table with rows and statistics before any server prepares its statements: planned on an
    # empty, never-analysed table, a prepared `id = ANY($1)` read is a sequential scan, and each
    # connection keeps that plan while the POST runs grow the table (until autovacuum analyses
    # it), which would measure the planner, not the runtimes.
    asyncio.run(admin_sql(database_url, SEED, "ANALYZE"))
    return database_url


class CpuSampler(threading.Thread):
    """Samples (time, CPU seconds of the server tree, is the load tool's wrk running) every 50 ms."""

    def __init__(self, server_pids: list[int], load_pid: int) -> None:
        super().__init__(daemon=True)
        self.server_pids = server_pids
        self.load_pid = load_pid
        self.samples: list[tuple[float, float, bool]] = []
        self.stopped = threading.Event()
        self.window = ""

    def _wrk_running(self) -> bool:
        for pid in descendants(self.load_pid):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "wrk":
                    return True
            except OSError:
                continue
        return False

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.monotonic(), cpu_seconds(self.server_pids), self._wrk_running()))
            self.stopped.wait(0.05)

    def cpu_rate(self, ended: float, measured_seconds: float) -> float:
        """CPU seconds per second of the server tree during the measured part of the run.

        With wrk, that is while the wrk process ran (the tool first creates the orders a GET run
        reads, which must not count); with the Python driver, the last `measured_seconds` before
        the tool exited. A margin is cut off both ends; the rate, not a total, is what is kept.
        """
        window = [(t, cpu) for t, cpu, wrk in self.samples if wrk]
        self.window = "while wrk ran"
        if len(window) < 4:
            self.window = "tail of the run"
            start, end = ended - measured_seconds, ended - 0.3
            window = [(t, cpu) for t, cpu, _ in self.samples if start <= t <= end]
        margin = min(0.3, (window[-1][0] - window[0][0]) / 5) if len(window) > 1 else 0.0
        window = [(t, cpu) for t, cpu in window if window[0][0] + margin <= t <= window[-1][0] - margin / 2]
        if len(window) < 2 or window[-1][0] <= window[0][0]:
            return float("nan")
        return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])


def load(server: RuntimeServer, scenario: str, seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    """One run of the load tool; the report gets the server's CPU per request."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        path = Path(handle.name)
    command = [
        sys.executable, "-m", "benchmarks.load", "--url", server.base_url, "--scenario", scenario,
        "--concurrency", str(args.concurrency), "--processes", str(args.processes), "--driver", args.driver,
        "--duration", str(seconds), "--quiet", "--json", str(path),
    ]  # fmt: skip
    pids = server.tree()
    tool = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    sampler = CpuSampler(pids, tool.pid)
    sampler.start()
    try:
        code = tool.wait(timeout=seconds + 180)
    finally:
        ended = time.monotonic()
        sampler.stopped.set()
        sampler.join()
    if code != 0:
        raise RuntimeError(f"the load tool failed ({code}) against {server.runtime}; log: {server.log_file.name}")
    report: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    rate = sampler.cpu_rate(ended, float(report["seconds"]))
    throughput = float(report["throughput_rps"])
    report["server_cpu_cores"] = round(rate, 3)
    report["cpu_window"] = sampler.window
    report["cpu_us_per_request"] = round(rate / throughput * 1e6, 1) if throughput else None
    return report


async def _shutdown_probe(server: RuntimeServer, database_url: str, hold: float, exit_timeout: float) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=exit_timeout + 10) as client:
        created = await client.post("/orders", json={"product": "shutdown-probe", "quantity": 1})
        order_id = created.json()["id"]
        pool = psqlpy.ConnectionPool(dsn=database_url, max_db_pool_size=3, connect_timeout_sec=5)
        try:
            locker = await pool.connection()
            watcher = await pool.connection()
            transaction = locker.transaction()
            await transaction.begin()
            await transaction.execute("SELECT id FROM orders WHERE id = $1 FOR UPDATE", [uuid.UUID(order_id)])
            put = asyncio.create_task(client.put(f"/orders/{order_id}", json={"product": "probe", "quantity": 2}))
            deadline = time.monotonic() + 10
            while (await watcher.execute(LOCK_WAITERS)).result()[0]["n"] == 0:
                if time.monotonic() > deadline or put.done():
                    await transaction.rollback()
                    return {"in_flight": "probe failed: the PUT never waited on the lock", "exit": "-"}
                await asyncio.sleep(0.02)
            signalled = time.monotonic()
            server.terminate()
            exited = asyncio.create_task(_exit_after(server, exit_timeout, signalled))
            await asyncio.sleep(hold)
            await transaction.commit()
            try:
                response = await put
                in_flight = f"answered {response.status_code}"
            except httpx.HTTPError as exc:
                in_flight = f"failed: {type(exc).__name__}"
            await asyncio.sleep(0.5)  # a backend whose client died still finishes its statement
            row = await watcher.execute("SELECT version FROM orders WHERE id = $1", [uuid.UUID(order_id)])
            applied = [r["version"] for r in row.result()] == [2]
            locker.close()
            watcher.close()
        finally:
            pool.close()
    code, after = await exited
    if code is None:
        left = len([pid for pid in server.tree() if alive(pid)])
        exit_text = f"still running after {exit_timeout:g} s ({left} process{'es' if left != 1 else ''}; killed)"
    else:
        exit_text = f"exit {code} after {after:.1f} s"
    return {"in_flight": in_flight, "change_applied": applied, "exit": exit_text, "exited": code is not None}


async def _exit_after(server: RuntimeServer, timeout: float, signalled: float) -> tuple[int | None, float]:
    """The exit code (None: still running after `timeout`) and how long after SIGTERM it came."""
    code = await asyncio.to_thread(server.wait, timeout)
    return code, time.monotonic() - signalled


def shutdown_probe(server: RuntimeServer, database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    try:
        return asyncio.run(_shutdown_probe(server, database_url, args.hold, args.exit_timeout))
    finally:
        server.kill()


def measure(database_url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every cell, `--rounds` times, interleaved: all runtimes are up at once (idle ones cost
    nothing but their pools) and each round takes every scenario on every runtime in turn, in a
    rotated order, so a burst of other work on the machine does not land on one runtime only.
    Then each runtime's graceful-shutdown probe."""
    servers: dict[str, RuntimeServer] = {}
    finished = False
    try:
        for runtime in args.runtimes:
            servers[runtime] = RuntimeServer(
                runtime, database_url, args.redis_url, args.workers, shutdown_timeout=args.exit_timeout - 2
            ).start()
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {r: {s: [] for s in args.scenarios} for r in args.runtimes}
        for round_index in range(args.rounds):
            shift = round_index % len(args.runtimes)
            order = args.runtimes[shift:] + args.runtimes[:shift]
            for scenario in args.scenarios:
                for runtime in order:
                    if args.warmup > 0:
                        load(servers[runtime], scenario, args.warmup, args)
                    report = load(servers[runtime], scenario, args.seconds, args)
                    runs[runtime][scenario].append(report)
                    print(
                        f"round {round_index + 1} {runtime:6} {SCENARIOS[scenario]:18} {summary(report)}",
                        file=sys.stderr,
                    )
        results = []
        for runtime in args.runtimes:
            probe = shutdown_probe(servers[runtime], database_url, args)
            print(f"{runtime:6} SIGTERM: {probe}", file=sys.stderr)
            results.append(
                {
                    "runtime": runtime,
                    "runs": [median_run(runs[runtime][scenario]) for scenario in args.scenarios],
                    "shutdown": probe,
                }
            )
        finished = True
        return results
    finally:
        for server in servers.values():
            server.kill()
            if finished and not args.keep_logs:  # a failed run keeps them: its error names one
                server.remove_log()


def median_run(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median throughput (its latency and CPU figures with it), and the spread of all."""
    ordered = sorted(reports, key=lambda r: float(r["throughput_rps"]))
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["rounds_rps"] = [r["throughput_rps"] for r in reports]
    cpu = sorted(r["cpu_us_per_request"] for r in reports if r["cpu_us_per_request"] is not None)
    chosen["rounds_cpu_us"] = cpu
    if cpu:
        chosen["cpu_us_per_request"] = cpu[(len(cpu) - 1) // 2]
    return chosen


def single_worker_probe(runtime: str, database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    server = RuntimeServer(runtime, database_url, args.redis_url, 1, shutdown_timeout=args.exit_timeout - 2).start()
    probe = shutdown_probe(server, database_url, args)
    if not args.keep_logs:
        server.remove_log()
    print(f"{runtime:6} 1 worker, SIGTERM: {probe}", file=sys.stderr)
    return probe


def summary(report: dict[str, Any]) -> str:
    lat = report["latency_ms"]
    return (
        f"{report['throughput_rps']:>9,.0f} req/s  p50 {lat['p50']} ms  p99 {lat['p99']} ms  "
        f"cpu {report['cpu_us_per_request']} us/req  errors {report['error_count']}"
    )


def machine() -> dict[str, Any]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    import granian
    import robyn

    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "granian": granian.__version__,
        "robyn": robyn.__version__,
    }


def spread_cell(value: float | None, rounds: list[float]) -> str:
    if value is None:
        return "-"
    if len(rounds) < 2:
        return f"{value:,.0f}"
    return f"{value:,.0f} ({min(rounds):,.0f}-{max(rounds):,.0f})"


def markdown(figures: dict[str, Any]) -> str:
    args = figures["settings"]
    m = figures["machine"]
    start, end = figures["loadavg_start"], figures["loadavg_end"]
    lines = [
        f"- Measured {figures['started']} with `python -m benchmarks.runtimes {figures['argv']}`".rstrip() + ".",
        f"- {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, granian {m['granian']}, robyn {m['robyn']}; "
        f"load average {start[0]:.2f} / {start[1]:.2f} / {start[2]:.2f} before, "
        f"{end[0]:.2f} / {end[1]:.2f} / {end[2]:.2f} after.",
        f"- {args['workers']} workers per runtime (robyn: {args['workers']} processes of 1 actix worker each), "
        f"one PostgreSQL database (seeded with {SEED_ROWS:,} analysed orders), load tool driver `{figures['driver']}`, "
        f"{args['concurrency']} connections, {args['seconds']:g} s per cell after {args['warmup']:g} s of warm-up, "
        f"{args['rounds']} round(s) interleaved across the runtimes.",
        "- req/s and CPU per request are medians over the rounds (range in brackets); p50, p99 and cores busy come "
        "from the run of median req/s. CPU per request: CPU time of the server's process tree (not PostgreSQL's, "
        "not the load tool's) while the measured run was under way, divided by its requests; cores busy: that CPU "
        "time per second. Server, PostgreSQL and load tool share the machine.",
        "",
        "| runtime | request | req/s | p50 ms | p99 ms | CPU us/request | server cores busy | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in figures["results"]:
        for r in result["runs"]:
            lat = r["latency_ms"]
            cells = [
                result["runtime"],
                SCENARIOS[r["scenario"]],
                spread_cell(r["throughput_rps"], r.get("rounds_rps", [])),
                lat["p50"],
                lat["p99"],
                spread_cell(r["cpu_us_per_request"], r.get("rounds_cpu_us", [])),
                f"{r['server_cpu_cores']:.2f}",
                r["error_count"],
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        f"Graceful shutdown: a PUT held inside the handler by a row lock, SIGTERM to the server, the lock "
        f"released {args['hold']:g} s later; exit awaited {args['exit_timeout']:g} s (SHUTDOWN_TIMEOUT "
        f"{args['exit_timeout'] - 2:g}).",
        "",
        "| runtime | workers | in-flight PUT | its change applied | process |",
        "|---|---:|---|---|---|",
    ]
    for result in figures["results"]:
        for workers, probe in ((args["workers"], result["shutdown"]), (1, result.get("shutdown_single"))):
            if probe is None:
                continue
            applied = {True: "yes", False: "no"}.get(probe.get("change_applied"), "-")
            lines.append(f"| {result['runtime']} | {workers} | {probe['in_flight']} | {applied} | {probe['exit']} |")
    lines += ["", ROBYN_SHUTDOWN]
    return "\n".join(lines) + "\n"


ROBYN_SHUTDOWN = """\
Why robyn behaves so (robyn 0.88, `robyn/processpool.py` and `src/server.rs`): with several processes,
the parent's SIGTERM handler SIGKILLs every child at once, so a request in flight loses its
connection (PostgreSQL still finishes the statement the dead process had sent: the change is
applied although the client saw an error); with one process no Python handler is installed,
actix-web's own signal handling stops the HTTP server and lets the request finish, but the
Python event loop in the main thread runs on and the process never exits. granian (RSGI and
ASGI) stops accepting, finishes the request, closes the pools and exits 0."""


def write_latest(path: str, table: str) -> None:
    Path(path).write_text(
        "# Runtime comparison: granian RSGI (production), granian ASGI, robyn\n\n"
        "The same `RestApi` (service/http/api.py) behind three thin bindings; written by "
        "`python -m benchmarks.runtimes` (`make bench-runtimes`).\n\n" + table
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL", LOCAL_POSTGRES_ADMIN_URL))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated, of: " + ", ".join(RUNTIMES))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS))
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each cell")
    parser.add_argument("--rounds", type=int, default=1, help="measure every cell this often; the median is shown")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes of every runtime")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--processes", type=int, default=1, help="load-tool processes (wrk: threads)")
    parser.add_argument("--driver", choices=("auto", "wrk", "python"), default="auto", help="the load tool's driver")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds the in-flight PUT is held after SIGTERM")
    parser.add_argument("--exit-timeout", type=float, default=12.0, help="seconds a server gets to exit on SIGTERM")
    parser.add_argument("--no-single-worker-probe", action="store_true", help="skip the 1-worker shutdown probes")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (an access line a request)")
    parser.add_argument("--output", default=str(LATEST), help="markdown file to write ('' for none)")
    parser.add_argument("--json", dest="json_path", help="also write every figure to this file")
    args = parser.parse_args(argv)
    args.runtimes = [r for r in args.runtimes.split(",") if r]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [r for r in args.runtimes if r not in RUNTIMES] + [s for s in args.scenarios if s not in SCENARIOS]
    if args.rounds < 1 or args.workers < 1 or args.seconds <= 0:
        parser.error("--rounds and --workers must be at least 1, --seconds above 0")
    if unknown:
        parser.error(f"unknown runtime or scenario: {', '.join(unknown)}")

    figures: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "loadavg_start": os.getloadavg(),
        "driver": "wrk" if args.driver != "python" and wrk_binary() else "python",
        "settings": {k: v for k, v in vars(args).items() if k not in ("admin_url", "redis_url")},
    }
    database_url = fresh_database(args.admin_url)
    results = measure(database_url, args)
    if not args.no_single_worker_probe and args.workers != 1:
        for result in results:
            result["shutdown_single"] = single_worker_probe(result["runtime"], database_url, args)
    figures["results"] = results
    figures["loadavg_end"] = os.getloadavg()
    asyncio.run(admin_sql(args.admin_url, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
    table = markdown(figures)
    print(table)
    if args.output:
        write_latest(args.output, table)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    from service.process_exit import run_then_exit

    run_then_exit(main)
