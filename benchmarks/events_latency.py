"""Events benchmarks: relay throughput and create-to-confirmed latency, on real PostgreSQL + Redis.

    .venv/bin/python -m benchmarks.events_latency relay --rows 20000
    .venv/bin/python -m benchmarks.events_latency latency --rate 200 --duration 10

`relay`: a throwaway schema gets `--rows` outbox rows in one bulk INSERT; one relay (in this
process, uvloop) publishes them to a throwaway stream; reports rows/s from start to the last XADD
being visible (XLEN == rows) and all rows marked.

`latency`: starts the real service (`serve`, roles http,worker) on a throwaway schema and stream,
creates orders over REST at a steady rate, and reads the stream (XREAD) for each order's
`order.updated` with status confirmed; latency = confirmed entry seen - create request sent.
Reports p50/p90/p99/max. DATABASE_URL / REDIS_URL default to the local servers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import httpx
import msgspec
import redis.asyncio as aioredis
import uvloop

from benchmarks.processes import ServiceProcess
from service.config import DEFAULT_REDIS_URL, LOCAL_POSTGRES_ADMIN_URL, with_database
from service.events.redis_publisher import RedisStreamPublisher
from service.events.relay import Relay
from service.events.stream import StreamNames
from service.store.database import Database
from service.store.postgres import PostgresOutbox
from tests.conftest import IsolatedSchema

DATABASE_URL = os.environ.get("DATABASE_URL", with_database(LOCAL_POSTGRES_ADMIN_URL, "test"))
REDIS_URL = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)

BULK_OUTBOX = """
INSERT INTO outbox (event_id, event_type, order_id, payload, request_id, occurred_at)
SELECT gen_random_uuid(), 'order.created', id,
       jsonb_build_object('id', id, 'product', 'bench', 'quantity', 1, 'status', 'pending', 'version', 1,
                          'created_at', now(), 'updated_at', now()),
       'bench-' || n, now()
FROM (SELECT gen_random_uuid() AS id, n FROM generate_series(1, $1) AS n) AS s
"""


def percentile(sorted_values: list[float], p: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


async def bench_relay(rows: int, batch_size: int) -> None:
    schema = IsolatedSchema(DATABASE_URL)
    await schema.create()
    stream = f"bench-relay-{uuid.uuid4().hex[:8]}"
    db = Database(schema.dsn, pool_size=2, acquire_timeout=5.0)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await db.fetch(BULK_OUTBOX, [rows])
        # No consumer group reads the throwaway stream, so the publish script has none to wait for.
        publisher = RedisStreamPublisher(client, StreamNames(stream, group="bench-relay"), maxlen=1_000_000)
        relay = Relay(PostgresOutbox(db, schema.dsn), publisher, batch_size=batch_size)
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(relay.run(stop))
        while relay.published_total < rows:
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        assert int(await client.xlen(stream)) == rows
        left = (await db.fetch("SELECT count(*) FROM outbox WHERE published_at IS NULL"))[0][0]
        assert left == 0
        print(f"relay: {rows} events in {elapsed:.3f} s = {rows / elapsed:,.0f} events/s (batch {batch_size})")
    finally:
        await client.delete(stream)
        await client.aclose()
        db.close()
        await schema.drop()


async def bench_latency(rate: float, duration: float, http_workers: int) -> None:
    schema = IsolatedSchema(DATABASE_URL)
    await schema.create()
    service = ServiceProcess(
        schema.dsn,
        REDIS_URL,
        "http,worker",
        {"HTTP_WORKERS": str(http_workers), "LOG_LEVEL": "WARNING"},
        name="events-latency",
    )
    stream = service.stream
    client = aioredis.Redis.from_url(REDIS_URL)
    sent: dict[str, float] = {}
    confirmed: dict[str, float] = {}
    try:
        await asyncio.to_thread(service.start, timeout=60.0)
        async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
            await asyncio.sleep(1.0)  # worker up

            async def read_stream() -> None:
                last = "0-0"
                while True:
                    response: Any = await client.xread({stream: last}, count=1000, block=200)
                    for _, batch in response or ():
                        for entry_id, fields in batch:
                            last = entry_id
                            if fields[b"event"] == b"order.updated":
                                payload = msgspec.json.decode(fields[b"payload"])
                                if payload["status"] == "confirmed":
                                    confirmed.setdefault(payload["id"], time.perf_counter())

            reader = asyncio.create_task(read_stream())

            async def create(i: int) -> None:
                started = time.perf_counter()
                response = await http.post("/orders", json={"product": f"b{i}", "quantity": 1})
                sent[response.json()["id"]] = started

            total = int(rate * duration)
            interval = 1.0 / rate
            began = time.perf_counter()
            creates = []
            for i in range(total):
                delay = began + i * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                creates.append(asyncio.create_task(create(i)))
            await asyncio.gather(*creates)
            deadline = time.perf_counter() + 30
            while len(confirmed.keys() & sent.keys()) < len(sent) and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            reader.cancel()
        latencies = sorted((confirmed[k] - sent[k]) * 1000 for k in sent if k in confirmed)
        print(
            f"create->confirmed over {len(sent)} orders at {rate:g}/s for {duration:g} s: "
            f"p50 {percentile(latencies, 50):.1f} ms, p90 {percentile(latencies, 90):.1f} ms, "
            f"p99 {percentile(latencies, 99):.1f} ms, max {latencies[-1]:.1f} ms; "
            f"missing {len(sent) - len(latencies)}"
        )
    finally:
        await asyncio.to_thread(service.stop, 30.0)
        await client.delete(stream, f"{stream}.dlq")
        await client.aclose()
        await schema.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    relay = sub.add_parser("relay")
    relay.add_argument("--rows", type=int, default=20_000)
    relay.add_argument("--batch-size", type=int, default=500)
    latency = sub.add_parser("latency")
    latency.add_argument("--rate", type=float, default=200.0)
    latency.add_argument("--duration", type=float, default=10.0)
    latency.add_argument("--http-workers", type=int, default=1)
    args = parser.parse_args()
    if args.command == "relay":
        uvloop.run(bench_relay(args.rows, args.batch_size))
    else:
        uvloop.run(bench_latency(args.rate, args.duration, args.http_workers))


if __name__ == "__main__":
    main()
