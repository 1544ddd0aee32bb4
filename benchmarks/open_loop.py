"""Creates at a fixed rate, whatever the service answers (open loop), from a process of its own.

Request i is due at start + i / rate; every request due is sent at once over an idle keep-alive
connection (a new one when none is idle, up to `max_connections`; beyond that requests wait for
one, and that wait counts). Latency runs from the request's due time, so a service that falls
behind shows it in the figures instead of slowing the load down (no coordinated omission); the
service time (from the moment the request was written) is reported beside it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

from benchmarks.histogram import Histogram
from benchmarks.load import HttpConnection

BODY = json.dumps({"product": "watch-bench", "quantity": 1}).encode()
DRAIN_TIMEOUT = 30.0  # seconds the requests still in flight at the end may take


async def drive(base_url: str, rate: float, duration: float, max_connections: int = 256) -> dict[str, Any]:
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    idle: list[HttpConnection] = []
    opened = 0
    freed = asyncio.Condition()
    from_due, from_send = Histogram(), Histogram()
    errors: Counter[str] = Counter()
    ok = 0
    perf = time.perf_counter

    async def take() -> HttpConnection:
        nonlocal opened
        async with freed:
            while not idle and opened >= max_connections:
                await freed.wait()
            if idle:
                return idle.pop()
            opened += 1
            return HttpConnection(host, port)

    async def give(conn: HttpConnection | None) -> None:
        nonlocal opened
        async with freed:
            if conn is None:
                opened -= 1
            else:
                idle.append(conn)
            freed.notify()

    async def one(due: float) -> None:
        nonlocal ok
        conn: HttpConnection | None = await take()
        assert conn is not None
        sent = perf()
        try:
            status, _ = await conn.request("POST", "/orders", BODY)
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors[f"connection {type(exc).__name__}"] += 1
            conn.close()
            conn = None
        else:
            done = perf()
            if status == 201:
                ok += 1
                from_due.add(done - due)
                from_send.add(done - sent)
            else:
                errors[f"http {status}"] += 1
        await give(conn)

    total = int(rate * duration)
    tasks: set[asyncio.Task[None]] = set()
    started = perf()
    sent_count = 0
    while sent_count < total:
        now = perf()
        while sent_count < total and started + sent_count / rate <= now:
            task = asyncio.create_task(one(started + sent_count / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent_count += 1
        await asyncio.sleep(max(0.0, started + sent_count / rate - perf()))
    scheduled_for = perf() - started
    if tasks:
        _, late = await asyncio.wait(set(tasks), timeout=DRAIN_TIMEOUT)
        for task in late:
            task.cancel()
        if late:
            errors[f"no answer within {DRAIN_TIMEOUT:g} s of the end"] += len(late)
    finished = perf() - started
    for conn in idle:
        conn.close()
    return {
        "target_rps": rate,
        "scheduled": total,
        "ok": ok,
        "errors": dict(errors),
        "sending_s": round(scheduled_for, 3),
        "seconds": round(finished, 3),
        "achieved_rps": round(ok / finished, 1) if finished else 0.0,
        "connections": opened,
        "latency_from_due": from_due.summary(),
        "latency_from_send": from_send.summary(),
        "finished_at": time.time(),
        "cpu_s": round(time.process_time(), 2),  # the driver's own CPU (it exits before anyone reads /proc)
    }


def run_in_process(base_url: str, rate: float, duration: float, reply: Connection) -> None:
    """A multiprocessing target: drive, then send the report through `reply`."""
    import uvloop

    reply.send(uvloop.run(drive(base_url, rate, duration)))
    reply.close()
