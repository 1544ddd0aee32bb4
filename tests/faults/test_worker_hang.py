"""A worker that hangs without crashing (SIGSTOP: every loop stops at once) is detected by its
heartbeat, killed and replaced by the supervisor, and every order is still confirmed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.conftest import ServiceProcess
from tests.faults.conftest import (
    PrivatePostgres,
    PrivateRedis,
    missing_orders,
    record_figures,
    role_pids,
    unconfirmed,
    wait_until,
)

pytestmark = pytest.mark.e2e

HEARTBEAT_TIMEOUT = 3.0


def _create(base_url: str, count: int, product: str) -> list[str]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        return [client.post("/orders", json={"product": product, "quantity": 1}).json()["id"] for _ in range(count)]


def _worker_alive(heartbeat_dir: str, max_age: float) -> int:
    env = {**os.environ, "HEARTBEAT_DIR": heartbeat_dir}
    command = [sys.executable, "-m", "service", "worker-alive", "--max-age", str(max_age)]
    return subprocess.run(command, env=env, capture_output=True, timeout=60).returncode


def test_a_stopped_worker_is_replaced_and_every_order_is_confirmed(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    run_service: Callable[..., ServiceProcess],
    tmp_path: object,
) -> None:
    heartbeat_dir = str(tmp_path)
    proc = run_service(
        private_postgres.url,
        private_redis.url,
        roles="http,worker",
        WORKER_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT),
        HEARTBEAT_DIR=heartbeat_dir,
        CLAIM_IDLE_MS="2000",
    )
    before = _create(proc.base_url, 20, "before")
    wait_until(lambda: unconfirmed(private_postgres.url, before) == 0, timeout=30, what="confirmed before")
    wait_until(lambda: _worker_alive(heartbeat_dir, HEARTBEAT_TIMEOUT) == 0, timeout=30, what="probe passes")

    pid = role_pids(proc)["worker"][0]
    stopped_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        during = _create(proc.base_url, 20, "during")  # acknowledged while the worker hangs

        def replaced() -> bool:
            return pid not in role_pids(proc).get("worker", [pid]) and bool(role_pids(proc).get("worker"))

        replaced_s = wait_until(replaced, timeout=60, what="worker replaced")
    finally:
        if pid in role_pids(proc).get("worker", []):
            os.kill(pid, signal.SIGCONT)
    acked = before + during + _create(proc.base_url, 20, "after")
    assert missing_orders(private_postgres.url, acked) == []
    wait_until(lambda: unconfirmed(private_postgres.url, acked) == 0, timeout=60, what="all confirmed")
    confirmed_s = time.monotonic() - stopped_at
    assert "worker heartbeat stopped; killing it" in proc.logs()
    assert _worker_alive(heartbeat_dir, HEARTBEAT_TIMEOUT) == 0  # the new worker beats
    record_figures(
        "worker-sigstop",
        {
            "heartbeat_timeout_s": HEARTBEAT_TIMEOUT,
            "replaced_after_s": round(replaced_s, 2),
            "all_confirmed_after_s": round(confirmed_s, 2),
            "orders": len(acked),
        },
    )


def test_the_liveness_probe_fails_without_fresh_heartbeats(tmp_path: object) -> None:
    from pathlib import Path

    directory = Path(str(tmp_path))
    assert _worker_alive(str(directory), 5) == 1  # no file at all
    beat = directory / "worker-0.beat"
    beat.touch()
    assert _worker_alive(str(directory), 5) == 0
    old = time.time() - 60
    os.utime(beat, (old, old))
    assert _worker_alive(str(directory), 5) == 1
