"""PostgreSQL restarted (a clean fast shutdown, then a crash) under mixed REST + gRPC load.

While it is down every request fails fast (503 / UNAVAILABLE, never slower than the acquire
timeout), the pools of every process recover by themselves within 5 s of PostgreSQL answering
again, and every order whose create was acknowledged exists afterwards and gets confirmed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.e2e.conftest import ServiceProcess
from tests.faults.conftest import (
    Load,
    PrivatePostgres,
    PrivateRedis,
    missing_orders,
    record_figures,
    unconfirmed,
    wait_outbox_drained,
    wait_until,
)

pytestmark = pytest.mark.e2e

ACQUIRE_TIMEOUT = 1.0
DOWN_SECONDS = 3.0
RECOVERY_LIMIT = 5.0
# A failed request answers within the acquire timeout; this margin covers scheduling on a busy
# 2-core machine, not a slower code path (a hang would take the client's 10 s timeout).
MARGIN = 1.5
FAILED_FAST = {"http 503", "grpc UNAVAILABLE"}


def test_postgres_restart_fails_fast_recovers_and_loses_nothing(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    run_service: Callable[..., ServiceProcess],
) -> None:
    proc = run_service(
        private_postgres.url,
        private_redis.url,
        DB_ACQUIRE_TIMEOUT=str(ACQUIRE_TIMEOUT),
        DB_POOL_SIZE="4",
    )
    figures: dict[str, object] = {}
    with Load(proc.base_url, proc.grpc_target, pause=0.005) as load:
        time.sleep(2.0)
        for mode in ("fast", "immediate"):  # a clean shutdown, then a crash (no shutdown checkpoint)
            down_at = time.monotonic()
            private_postgres.stop(mode)
            time.sleep(DOWN_SECONDS)
            private_postgres.start()  # returns once it accepts connections
            up_at = time.monotonic()
            time.sleep(RECOVERY_LIMIT + 1.0)
            gap = load.between(down_at, up_at)
            assert gap, "no request was sent while PostgreSQL was down"
            gap_errors = load.errors(gap)
            assert set(gap_errors) <= FAILED_FAST, gap_errors
            slowest = max(o.seconds for o in gap)
            assert slowest <= ACQUIRE_TIMEOUT + MARGIN, f"a request took {slowest:.2f} s while PostgreSQL was down"
            recovery = {}
            for transport in ("rest", "grpc"):
                first_ok = load.first_ok_after(up_at, transport)
                assert first_ok is not None, f"{transport} never recovered"
                recovery[transport] = round(first_ok - up_at, 3)
                assert recovery[transport] <= RECOVERY_LIMIT, (transport, recovery)
            settled = load.between(up_at + RECOVERY_LIMIT, time.monotonic())
            assert settled and load.errors(settled) == {}, load.errors(settled)
            figures[mode] = {
                "requests_while_down": len(gap),
                "errors_while_down": dict(gap_errors),
                "slowest_while_down_s": round(slowest, 3),
                "recovery_s": recovery,
            }
    acked = list(load.acked)
    assert missing_orders(private_postgres.url, acked) == []
    confirm_s = wait_until(lambda: unconfirmed(private_postgres.url, acked) == 0, timeout=30, what="all confirmed")
    wait_outbox_drained(private_postgres.url)
    record_figures(
        "postgres-restart",
        {**load.summary(), "restarts": figures, "down_s": DOWN_SECONDS, "all_confirmed_after_s": round(confirm_s, 2)},
    )
