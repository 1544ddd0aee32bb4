"""Before/after of whole revisions in one sitting: REST GET and POST, gRPC GetOrder, interleaved.

    python -m benchmarks.revisions 8ffcbcf b0b4103 HEAD --rounds 6
    python -m benchmarks.revisions HEAD~1 HEAD --rest update,mixed --no-grpc

Each revision is checked out with `git worktree add` under a temporary folder, its `native/`
compiled in place, and run from there with this checkout's interpreter and packages (so a
revision that needs other dependencies is not comparable this way). Each round runs every
revision once, on a fresh database, in alternating order; a run is REST GET and POST (or the
`--rest` scenarios) with every role (`HTTP_WORKERS=2`; the load tool's wrk driver, 32
connections) and, unless `--no-grpc`, gRPC GetOrder with roles `http,grpc` (`HTTP_WORKERS=1`;
h2load, 8 connections x 4 streams). Prints the median and range of each figure per revision, and
CPU per request of the service's processes (from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.processes import ServiceProcess, cpu_seconds, descendants
from benchmarks.sitting import fresh_database, grpc_messages, h2load, load
from service.config import DEFAULT_REDIS_URL, LOCAL_POSTGRES_ADMIN_URL

ROOT = Path(__file__).resolve().parent.parent
GET_ORDER = "orders.OrderService/GetOrder"
REST_LABELS = {"get": "GET", "create": "POST", "update": "PUT", "mixed": "mixed", "list": "list"}


@contextmanager
def checkouts(revisions: list[str]) -> Iterator[dict[str, Path]]:
    """Each revision in a worktree of its own, ready to run; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="orders-revisions-") as folder:
        trees: dict[str, Path] = {}
        try:
            for revision in revisions:
                tree = Path(folder) / revision.replace("/", "_")
                git = ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), revision]
                subprocess.run(git, check=True)
                trees[revision] = tree
                migrations = tree / "service" / "migrations"
                if not migrations.exists():  # the wheel maps migrations/ there; a checkout does not
                    migrations.symlink_to(Path("..") / "migrations")
                build = [sys.executable, "setup.py", "build_ext", "--inplace", "--quiet"]
                subprocess.run(build, cwd=tree, check=True, capture_output=True)
            yield trees
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def cpu_per_request(pids: list[int], before: float, requests: float) -> int | None:
    return round((cpu_seconds(pids) - before) / requests * 1e6) if requests else None


def measure(tree: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {}
    quiet = {"LOG_LEVEL": "WARNING"}
    with fresh_database(args.admin_url, f"revisions_{uuid.uuid4().hex[:8]}") as dsn:
        service = ServiceProcess(dsn, args.redis_url, extra_env=quiet, name="revisions", source=tree)
        service.start(timeout=60)
        try:
            for scenario in args.rest:
                label = REST_LABELS[scenario]
                pids = [service.pid, *descendants(service.pid)]
                before = cpu_seconds(pids)
                report = load(service.base_url, scenario, [], args.seconds, args.warmup)
                served = report["throughput_rps"] * report["seconds"]
                figures[label] = {"rate": report["throughput_rps"], "cpu_us": cpu_per_request(pids, before, served)}
        finally:
            service.stop(timeout=30)
    if args.no_grpc:
        return figures
    with fresh_database(args.admin_url, f"revisions_{uuid.uuid4().hex[:8]}") as dsn:
        env = {**quiet, "HTTP_WORKERS": "1"}
        service = ServiceProcess(dsn, args.redis_url, "http,grpc", env, name="revisions", source=tree)
        service.start(wait_for_grpc=True, timeout=60)
        try:
            message = grpc_messages(service.grpc_target)[GET_ORDER]
            h2load(service.grpc_target, GET_ORDER, message, args.warmup)
            pids = [service.pid, *descendants(service.pid)]
            before = cpu_seconds(pids)
            calls = h2load(service.grpc_target, GET_ORDER, message, args.seconds)["calls_per_s"]
            figures["GetOrder"] = {"rate": calls, "cpu_us": cpu_per_request(pids, before, calls * args.seconds)}
        finally:
            service.stop(timeout=30)
    return figures


def summary(runs: dict[str, list[dict[str, dict[str, Any]]]]) -> str:
    lines = ["| revision | figure | median | range | CPU us/req (median) |", "|---|---|---:|---:|---:|"]
    for revision, results in runs.items():
        for figure in results[0]:
            rates = [run[figure]["rate"] for run in results]
            cpus = [run[figure]["cpu_us"] for run in results if run[figure]["cpu_us"] is not None]
            spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
            cpu = f"{statistics.median(cpus):.0f}" if cpus else "-"
            lines.append(f"| {revision} | {figure} | {statistics.median(rates):,.0f} | {spread} | {cpu} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="+", help="git revisions to compare (e.g. a commit, a branch, HEAD)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL", LOCAL_POSTGRES_ADMIN_URL))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--json", dest="json_path", default="benchmarks/revisions-latest.json")
    parser.add_argument(
        "--rest", default="get,create", help=f"load-tool scenarios, comma-separated ({', '.join(REST_LABELS)})"
    )
    parser.add_argument("--no-grpc", action="store_true", help="skip the gRPC GetOrder run")
    args = parser.parse_args(argv)
    args.rest = [name for name in args.rest.split(",") if name]
    unknown = [name for name in args.rest if name not in REST_LABELS]
    if unknown:
        parser.error(f"unknown REST scenario(s): {', '.join(unknown)}")
    runs: dict[str, list[dict[str, dict[str, Any]]]] = {revision: [] for revision in args.revisions}
    with checkouts(args.revisions) as trees:
        for round_number in range(args.rounds):
            order = args.revisions if round_number % 2 == 0 else args.revisions[::-1]
            for revision in order:
                runs[revision].append(measure(trees[revision], args))
                print(f"  round {round_number + 1}: {revision}: {runs[revision][-1]}", file=sys.stderr)
    Path(args.json_path).write_text(json.dumps(runs, indent=1))
    print(summary(runs))
    return 0


if __name__ == "__main__":
    from service.process_exit import run_then_exit

    run_then_exit(main)
