"""Applies migrations/NNNN_name.sql files once each, in order, under an advisory lock."""

from __future__ import annotations

import logging
import re
from importlib import resources

import msgspec
import psqlpy

from service.store.database import tls_options

log = logging.getLogger(__name__)

# Any constant shared by every replica of this service; pg_advisory_lock keys are bigint.
_LOCK_KEY = 0x6F72646572730001
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("service.migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {[m.name for m in found]}")
    return found


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; returns the names applied. Safe to run from many replicas."""
    plain_dsn, tls = tls_options(dsn)
    pool = psqlpy.ConnectionPool(dsn=plain_dsn, **tls, max_db_pool_size=2, connect_timeout_sec=5)
    applied: list[str] = []
    try:
        conn = await pool.connection()
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", [_LOCK_KEY], prepared=False)
            try:
                await conn.execute_batch(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                result = await conn.execute("SELECT version FROM schema_migrations", prepared=False)
                done = {row[0] for row in result.result(as_tuple=True)}
                for migration in load_migrations():
                    if migration.version in done:
                        continue
                    async with conn.transaction() as tx:
                        await tx.execute_batch(migration.sql)
                        await tx.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                            [migration.version, migration.name],
                            prepared=False,
                        )
                    log.info("migration applied", extra={"migration": migration.name})
                    applied.append(migration.name)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", [_LOCK_KEY], prepared=False)
        finally:
            conn.close()
    finally:
        pool.close()
    return applied
