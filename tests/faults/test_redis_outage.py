"""Redis down for REDIS_OUTAGE_SECONDS (default 30) under mixed REST + gRPC load.

Nothing in the request path touches Redis, so REST and gRPC answer every request throughout;
the relay and the consumer back off and catch up once Redis is back: every outbox event is in
the stream and every acknowledged order is confirmed. Readiness stays up throughout (REST
`/ready` 200, gRPC health SERVING): Redis is reported in `/ready`'s body, never required.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from tests.e2e.conftest import ServiceProcess
from tests.faults.conftest import (
    Load,
    PrivatePostgres,
    PrivateRedis,
    _grpc_serving,
    missing_orders,
    record_figures,
    sql,
    unconfirmed,
    wait_outbox_drained,
    wait_until,
)

pytestmark = pytest.mark.e2e

OUTAGE_SECONDS = float(os.environ.get("REDIS_OUTAGE_SECONDS", "30"))


def test_redis_outage_leaves_the_apis_unaffected_and_every_event_arrives_afterwards(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    run_service: Callable[..., ServiceProcess],
) -> None:
    # Published rows are kept (a retention) so every event can be looked for in the stream afterwards.
    proc = run_service(private_postgres.url, private_redis.url, OUTBOX_RETENTION="3600")
    with Load(proc.base_url, proc.grpc_target, pause=0.02) as load:
        time.sleep(2.0)
        down_at = time.monotonic()
        private_redis.stop()
        probes: list[tuple[int, str, bool]] = []  # /ready status, its redis state, gRPC SERVING
        while time.monotonic() - down_at < OUTAGE_SECONDS:
            ready = httpx.get(f"{proc.base_url}/ready", timeout=5)
            probes.append((ready.status_code, ready.json()["checks"]["redis"], _grpc_serving(proc.grpc_target)))
            time.sleep(1.0)
        private_redis.start()
        up_at = time.monotonic()
        time.sleep(1.0)
    during = load.between(down_at, up_at)
    assert all(status == 200 and serving for status, _, serving in probes), probes
    assert "unavailable" in {state for _, state, _ in probes}, probes  # visible, though not failing
    assert len(during) > 100, "too little load during the outage to mean anything"
    assert load.errors() == {}, load.errors()
    acked = list(load.acked)
    assert missing_orders(private_postgres.url, acked) == []
    wait_until(lambda: unconfirmed(private_postgres.url, acked) == 0, timeout=60, what="all confirmed")
    confirmed_after = time.monotonic() - up_at  # Redis back -> every acknowledged order confirmed
    wait_outbox_drained(private_postgres.url)
    client = redis.Redis.from_url(private_redis.url)
    try:
        raw: Any = client.xrange(proc.stream)
        published = {fields[b"event_id"].decode() for _, fields in raw}
        wait_until(lambda: int(client.xpending(proc.stream, "order-processors")["pending"]) == 0, what="all acked")
    finally:
        client.close()
    outbox = {str(row[0]) for row in sql(private_postgres.url, "SELECT event_id FROM outbox")}
    assert outbox - published == set(), "events missing from the stream"
    writes = [o for o in during if o.op in ("create", "update")]
    record_figures(
        "redis-outage",
        {
            **load.summary(),
            "outage_s": OUTAGE_SECONDS,
            "requests_during_outage": len(during),
            "ready_probes_during_outage": f"{sum(p[0] == 200 for p in probes)}/{len(probes)} 200",
            "ready_redis_check_during_outage": dict(Counter(p[1] for p in probes)),
            "grpc_serving_during_outage": f"{sum(p[2] for p in probes)}/{len(probes)}",
            "writes_ok_during_outage": {
                transport: f"{sum(o.ok for o in writes if o.transport == transport)}/"
                f"{sum(o.transport == transport for o in writes)}"
                for transport in ("rest", "grpc")
            },
            "creates_acked_during_outage": sum(o.ok for o in writes if o.op == "create"),
            "orders_confirmed": f"{len(acked) - unconfirmed(private_postgres.url, acked)}/{len(acked)}",
            "events": len(outbox),
            "all_confirmed_after_redis_back_s": round(confirmed_after, 2),
        },
    )
