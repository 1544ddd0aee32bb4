"""Events end to end: the real service (http + worker roles), real PostgreSQL and Redis.

Orders created over REST are published through the outbox to a stream of the test's own, and
confirmed by the consumer; Redis outages, a killed worker, poison entries and two workers lose
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from service.store.database import Database
from tests.conftest import IsolatedSchema
from tests.e2e.conftest import ServiceProcess
from tests.private_servers import PrivateRedis, wait_until

if TYPE_CHECKING:
    from tests.conftest import TestServices

GROUP = "order-processors"
StartService = Callable[..., ServiceProcess]


@pytest.fixture
def events_service(start_service: StartService, test_services: TestServices) -> Iterator[StartService]:
    """start_service(roles="http,worker", ...) whose streams are deleted afterwards."""
    started: list[ServiceProcess] = []

    def factory(**env: str) -> ServiceProcess:
        proc = start_service(roles="http,worker", **env)
        started.append(proc)
        return proc

    yield factory
    client = redis.Redis.from_url(test_services.redis_url)
    for proc in started:
        proc.stop()
        client.delete(proc.stream, f"{proc.stream}.dlq")
    client.close()


def entries(client: redis.Redis, stream: str) -> list[tuple[str, dict[str, str]]]:
    raw: Any = client.xrange(stream)
    return [(i.decode(), {k.decode(): v.decode() for k, v in f.items()}) for i, f in raw]


def order_events(stream_entries: list[tuple[str, dict[str, str]]]) -> dict[str, list[dict[str, Any]]]:
    """Per order id: (event, payload) of its entries in stream order."""
    found: dict[str, list[dict[str, Any]]] = {}
    for _, fields in stream_entries:
        payload = msgspec.json.decode(fields["payload"])
        found.setdefault(payload["id"], []).append({**fields, "payload": payload})
    return found


def sql(dsn: str, statement: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    async def run() -> list[tuple[Any, ...]]:
        db = Database(dsn, pool_size=2, acquire_timeout=5.0)
        try:
            return await db.fetch(statement, params)
        finally:
            db.close()

    return asyncio.run(run())


def pending_count(client: redis.Redis, stream: str) -> int:
    info: Any = client.xpending(stream, GROUP)
    return int(info["pending"])


def handled_lines(proc: ServiceProcess) -> list[dict[str, Any]]:
    lines = []
    for line in proc.logs().splitlines():
        if '"event handled"' in line:
            with contextlib.suppress(msgspec.DecodeError):
                lines.append(msgspec.json.decode(line))
    return lines


def test_created_order_is_confirmed_and_both_events_carry_the_request_id(
    events_service: StartService, test_services: TestServices
) -> None:
    proc = events_service(LOG_LEVEL="DEBUG")  # the consumer's line per event is DEBUG
    client = redis.Redis.from_url(test_services.redis_url)
    created = httpx.post(
        f"{proc.base_url}/orders", json={"product": "book", "quantity": 2}, headers={"X-Request-ID": "trace-me-1"}
    )
    assert created.status_code == 201
    order_id = created.json()["id"]
    wait_until(
        lambda: httpx.get(f"{proc.base_url}/orders/{order_id}").json()["status"] == "confirmed", what="confirmed"
    )
    wait_until(lambda: len(entries(client, proc.stream)) >= 2, what="two entries")
    events = order_events(entries(client, proc.stream))[order_id]
    assert [e["event"] for e in events] == ["order.created", "order.updated"]
    assert [e["payload"]["status"] for e in events] == ["pending", "confirmed"]
    assert all(e["request_id"] == "trace-me-1" for e in events)
    assert all(e["occurred_at"].endswith("Z") and e["event_id"] for e in events)
    # the consumer's log line for it carries the request id
    wait_until(lambda: any(line.get("request_id") == "trace-me-1" for line in handled_lines(proc)), what="log")
    wait_until(lambda: pending_count(client, proc.stream) == 0, what="acked")
    figures = httpx.get(f"{proc.base_url}/metrics/events").json()
    assert figures["outbox"]["backlog"] == 0
    assert figures["stream"]["length"] == 2
    assert figures["stream"]["pending"] == 0
    assert figures["stream"]["lag"] == 0
    assert figures["stream"]["dlq_length"] == 0
    exposition = httpx.get(f"{proc.base_url}/metrics").text
    gauges = {
        sample.name: sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name.startswith(("orders_outbox", "orders_stream"))
    }
    assert gauges["orders_outbox_backlog"] == 0
    assert gauges["orders_stream_length"] == 2
    assert gauges["orders_stream_pending"] == 0
    assert gauges["orders_stream_dlq_length"] == 0
    assert proc.stop() == 0
    assert '"worker stopped"' in proc.logs()
    client.close()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis(persistent=False)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def test_redis_outage_loses_no_event_and_keeps_per_order_order(
    events_service: StartService, private_redis: PrivateRedis
) -> None:
    proc = events_service(REDIS_URL=private_redis.url)
    with httpx.Client(base_url=proc.base_url, timeout=10) as http:
        warmup = http.post("/orders", json={"product": "warmup", "quantity": 1})
        assert warmup.status_code == 201
        warmup_url = f"/orders/{warmup.json()['id']}"
        wait_until(lambda: http.get(warmup_url).json()["status"] == "confirmed", what="worker running")
        private_redis.stop()
        ids = []
        for i in range(20):
            response = http.post(
                "/orders", json={"product": f"p{i}", "quantity": 1}, headers={"X-Request-ID": f"o-{i}"}
            )
            assert response.status_code == 201
            ids.append(response.json()["id"])
        for index, order_id in enumerate(ids[::2]):
            changed = http.put(f"/orders/{order_id}", json={"product": f"p{index * 2}", "quantity": 7})
            assert changed.status_code == 200
        time.sleep(1.0)  # the relay and the consumer fail meanwhile
        private_redis.start()  # same port, empty (no persistence)
        client = redis.Redis.from_url(private_redis.url)

        def all_confirmed() -> bool:
            return all(http.get(f"/orders/{i}").json()["status"] == "confirmed" for i in ids)

        wait_until(all_confirmed, what="all confirmed")
    per_order = order_events(entries(client, proc.stream))
    for index, order_id in enumerate(ids):
        events = per_order[order_id]
        versions = [e["payload"]["version"] for e in events]
        assert versions == sorted(versions), versions  # per order, in order
        expected = [1, 2, 3] if index % 2 == 0 else [1, 2]
        assert sorted(set(versions)) == expected  # every event arrived
        assert events[0]["event"] == "order.created"
        assert events[-1]["payload"]["status"] == "confirmed"
    assert proc.logs().count("Redis (relay) unavailable") == 1  # logged once per failure streak
    client.close()


def _worker_pid(proc: ServiceProcess) -> int | None:
    assert proc.process is not None
    out = subprocess.run(["pgrep", "-P", str(proc.process.pid), "-f", "role worker"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if pids else None


BULK_ORDERS = """
WITH o AS (
    INSERT INTO orders (id, product, quantity, status, version, created_at, updated_at)
    SELECT id, 'bulk', 1, 'pending', 1, now(), now() FROM unnest($1::uuid[]) AS id
    RETURNING id, created_at
)
INSERT INTO outbox (event_id, event_type, order_id, payload, occurred_at)
SELECT gen_random_uuid(), 'order.created', id,
       jsonb_build_object('id', id, 'product', 'bulk', 'quantity', 1, 'status', 'pending', 'version', 1,
                          'created_at', created_at, 'updated_at', created_at),
       created_at
FROM o
"""


def test_kill_9_of_the_worker_mid_batch_loses_nothing(
    events_service: StartService, service_schema: IsolatedSchema, test_services: TestServices
) -> None:
    batch = 100
    # Published rows are kept (a retention) so the stream can be checked against the table afterwards.
    proc = events_service(RELAY_BATCH_SIZE=str(batch), CLAIM_IDLE_MS="1000", OUTBOX_RETENTION="3600")
    client = redis.Redis.from_url(test_services.redis_url)
    wait_until(lambda: _worker_pid(proc) is not None and '"relay active"' in proc.logs(), what="worker up")
    victim = _worker_pid(proc)
    assert victim is not None
    total = 4000
    ids = sorted((uuid.uuid4() for _ in range(total)), key=str)
    sql(service_schema.dsn, BULK_ORDERS, [ids])
    wait_until(lambda: int(client.xlen(proc.stream)) >= 3 * batch, timeout=10, what="publishing started")  # type: ignore[arg-type]
    os.kill(victim, signal.SIGKILL)
    published_at_kill = int(client.xlen(proc.stream))  # type: ignore[arg-type]
    wait_until(lambda: _worker_pid(proc) not in (None, victim), what="worker restarted")

    def all_confirmed() -> bool:
        return sql(service_schema.dsn, "SELECT count(*) FROM orders WHERE status = 'confirmed'")[0][0] == total

    wait_until(all_confirmed, timeout=40, what="all confirmed")
    # the confirmations' own events are published and read after the last confirmation
    wait_until(
        lambda: sql(service_schema.dsn, "SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0] == 0,
        timeout=20,
        what="outbox drained",
    )
    wait_until(lambda: pending_count(client, proc.stream) == 0, timeout=10, what="nothing pending")
    outbox = [str(r[0]) for r in sql(service_schema.dsn, "SELECT event_id FROM outbox ORDER BY id")]
    published = Counter(fields["event_id"] for _, fields in entries(client, proc.stream))
    assert set(published) == set(outbox)  # none missing, none invented
    duplicated = [event_id for event_id in outbox if published[event_id] > 1]
    # only the batch whose mark the kill lost is published twice: at most one batch, consecutive
    assert len(duplicated) <= batch
    if duplicated:
        first = outbox.index(duplicated[0])
        assert outbox[first : first + len(duplicated)] == duplicated
    for events in order_events(entries(client, proc.stream)).values():
        assert events[0]["event"] == "order.created"
        versions = [e["payload"]["version"] for e in events]
        assert max(versions) == 2 and versions.count(2) == 1  # confirmed exactly once
    assert 0 < published_at_kill < total * 2
    print(f"killed at {published_at_kill} entries; {len(duplicated)} events published twice")
    assert "role process exited unexpectedly" in proc.logs()
    client.close()


def test_poison_entry_goes_to_the_dlq_and_the_consumer_keeps_going(
    events_service: StartService, test_services: TestServices
) -> None:
    proc = events_service(MAX_DELIVERIES="2", CLAIM_IDLE_MS="200", RETRY_BACKOFF_MS="100")
    client = redis.Redis.from_url(test_services.redis_url)
    poison = {"event": "order.created", "payload": "{not json", "event_id": "poison-1", "request_id": "poison-rid"}
    poison_id = client.xadd(proc.stream, poison)  # type: ignore[arg-type]
    created = httpx.post(f"{proc.base_url}/orders", json={"product": "good", "quantity": 1})
    order_id = created.json()["id"]
    wait_until(
        lambda: httpx.get(f"{proc.base_url}/orders/{order_id}").json()["status"] == "confirmed", what="confirmed"
    )
    wait_until(lambda: int(client.xlen(f"{proc.stream}.dlq")) == 1, what="dead-lettered")  # type: ignore[arg-type]
    [(_, fields)] = entries(client, f"{proc.stream}.dlq")
    assert fields["event"] == "order.created"
    assert fields["payload"] == "{not json"
    assert fields["request_id"] == "poison-rid"
    assert fields["original_id"] == poison_id.decode()  # type: ignore[union-attr]
    assert fields["deliveries"] == "2"
    assert fields["error"]
    wait_until(lambda: pending_count(client, proc.stream) == 0, what="nothing pending")
    assert httpx.get(f"{proc.base_url}/metrics/events").json()["stream"]["dlq_length"] == 1
    client.close()


def test_two_workers_handle_each_entry_once(events_service: StartService, test_services: TestServices) -> None:
    proc = events_service(WORKER_PROCESSES="2", LOG_LEVEL="DEBUG")  # a DEBUG line per handled event
    client = redis.Redis.from_url(test_services.redis_url)

    async def create_all() -> list[str]:
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=10) as http:
            responses = await asyncio.gather(
                *(http.post("/orders", json={"product": f"p{i}", "quantity": 1}) for i in range(200))
            )
        assert all(r.status_code == 201 for r in responses)
        return [r.json()["id"] for r in responses]

    ids = asyncio.run(create_all())

    def all_confirmed() -> bool:
        stream_entries = entries(client, proc.stream)
        per_order = order_events(stream_entries)
        return all(len(per_order.get(i, [])) == 2 for i in ids)

    wait_until(all_confirmed, what="all confirmed")
    wait_until(lambda: pending_count(client, proc.stream) == 0, what="nothing pending")
    stream_entries = entries(client, proc.stream)
    assert len(stream_entries) == 400  # no event published twice
    wait_until(lambda: len(handled_lines(proc)) >= 400, what="all handled")
    handled = Counter(line["entry_id"] for line in handled_lines(proc))
    assert set(handled) == {entry_id for entry_id, _ in stream_entries}
    assert set(handled.values()) == {1}  # each entry handled once
    logs = proc.logs()
    assert logs.count('"relay active"') == 1
    assert logs.count("relay standing by") == 1
    client.close()
