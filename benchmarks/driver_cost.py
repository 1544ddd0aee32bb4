"""What one psqlpy statement costs the event loop's thread, by kind of statement.

    python -m benchmarks.driver_cost                          # the local PostgreSQL's `test` database
    python -m benchmarks.driver_cost --dsn postgresql://...   # another one

Runs each statement over and over on one held connection, under uvloop as the service does, and
reports the calling thread's CPU (`time.thread_time`) and the wall time per statement. The
thread's CPU is what a request's share of the statement costs the process that sent it: the
HTTP worker, the gRPC process or the worker role each run on one such thread.

Measured with psqlpy 0.13.1 (benchmarks/RESULTS.md, 2026-12-08): about 110-160 us of the thread's
CPU per statement with parameters, 65-120 without, whatever the rows. perf shows the difference:
psqlpy compiles a regular expression (the one that finds `$(name)p` keyword parameters) on the
event loop's thread for every statement that has parameters, prepared or not, before it looks
for its statement in the cache. Re-run this when psqlpy is upgraded: the figures say whether
batching many calls into one statement still pays as much as it does.
"""

from __future__ import annotations

import argparse
import time
import uuid
from importlib.metadata import version
from typing import Any

import psqlpy
import uvloop

from service.config import LOCAL_POSTGRES_ADMIN_URL

STATEMENTS: dict[str, tuple[str, Any]] = {
    "no parameters": ("SELECT 1", None),
    "one parameter": ("SELECT $1::integer", [1]),
    "15 parameters": ("SELECT " + " + ".join(f"${n}::integer" for n in range(1, 16)), list(range(15))),
    "a point read (uuid[] of 8)": (
        "SELECT id FROM unnest($1::uuid[]) AS t(id)",
        [[uuid.uuid4() for _ in range(8)]],
    ),
}


async def measure(dsn: str, repeat: int) -> dict[str, tuple[float, float]]:
    pool = psqlpy.ConnectionPool(dsn=dsn, max_db_pool_size=2)
    try:
        conn = await pool.connection()
        figures = {}
        for label, (sql, parameters) in STATEMENTS.items():
            for _ in range(100):  # prepared and cached before the count starts
                await conn.execute(sql, parameters)
            cpu, wall = time.thread_time(), time.perf_counter()
            for _ in range(repeat):
                (await conn.execute(sql, parameters)).result(as_tuple=True)
            figures[label] = ((time.thread_time() - cpu) / repeat * 1e6, (time.perf_counter() - wall) / repeat * 1e6)
        conn.close()
        return figures
    finally:
        pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=LOCAL_POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/test")
    parser.add_argument("--repeat", type=int, default=3000)
    args = parser.parse_args(argv)
    figures = uvloop.run(measure(args.dsn, args.repeat))
    print(f"psqlpy {version('psqlpy')}, {args.repeat} runs each")
    print("| statement | thread CPU us | wall us |")
    print("|---|---:|---:|")
    for label, (cpu, wall) in figures.items():
        print(f"| {label} | {cpu:.1f} | {wall:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
