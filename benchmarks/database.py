"""One-off SQL on a throwaway connection, for the benchmark commands and the tests.

Creating and dropping databases and schemas, seeding, reading a figure: none of it goes through
the service's own pool (service/store/), which these commands and tests start and stop around.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import psqlpy

CONNECT_TIMEOUT = 5


def with_search_path(dsn: str, schema: str) -> str:
    """`dsn` with `schema` first on its search_path (what an isolated schema's users connect with)."""
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}options={quote(f'-c search_path={schema}')}"


async def admin_sql(dsn: str, *statements: str) -> None:
    """Run each statement in turn, outside any transaction (CREATE/DROP DATABASE work too)."""
    pool = psqlpy.ConnectionPool(dsn=dsn, max_db_pool_size=2, connect_timeout_sec=CONNECT_TIMEOUT)
    try:
        conn = await pool.connection()
        try:
            for statement in statements:
                await conn.execute_batch(statement)
        finally:
            conn.close()
    finally:
        pool.close()  # psqlpy aborts the interpreter at exit when a pool is left open


async def fetch_rows(dsn: str, query: str, parameters: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """The rows of one query, as tuples."""
    pool = psqlpy.ConnectionPool(dsn=dsn, max_db_pool_size=2, connect_timeout_sec=CONNECT_TIMEOUT)
    try:
        conn = await pool.connection()
        try:
            rows: list[tuple[Any, ...]] = (await conn.execute(query, parameters)).result(as_tuple=True)
            return rows
        finally:
            conn.close()
    finally:
        pool.close()
