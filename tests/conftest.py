"""Shared fixtures: real PostgreSQL and Redis (local, from env, or embedded), isolated per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from benchmarks.database import admin_sql, with_search_path
from benchmarks.processes import free_port as free_port  # shared with the benchmark commands
from service.config import DEFAULT_REDIS_URL, LOCAL_POSTGRES_ADMIN_URL, with_database
from service.devservers import answers, resolve_services
from service.process_exit import exit_now
from service.store.migrator import migrate


class TestServices:
    __test__ = False  # a fixture's value, not a test class

    def __init__(self, database_url: str, redis_url: str) -> None:
        self.database_url = database_url
        self.redis_url = redis_url


@pytest.fixture(scope="session")
def test_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServices]:
    """DATABASE_URL/REDIS_URL when set; else the local defaults when they answer; else embedded."""
    database_url = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    if not database_url and answers("127.0.0.1", 5432):
        database_url = with_database(LOCAL_POSTGRES_ADMIN_URL, "test")
    if not redis_url and answers("127.0.0.1", 6379):
        redis_url = DEFAULT_REDIS_URL
    embedded = None
    if not database_url or not redis_url:
        embedded = resolve_services(
            tmp_path_factory.mktemp("embedded"),
            database_name="test",
            database_url=database_url,
            redis_url=redis_url,
            persistent=False,
        )
        database_url = database_url or embedded.database_url
        redis_url = redis_url or embedded.redis_url
    try:
        yield TestServices(database_url, redis_url)
    finally:
        if embedded is not None:
            embedded.stop()


class IsolatedSchema:
    """A fresh schema with every migration applied; `dsn` puts it on the search_path."""

    def __init__(self, base_dsn: str) -> None:
        self.name = f"t_{uuid.uuid4().hex[:12]}"
        self.base_dsn = base_dsn
        self.dsn = with_search_path(base_dsn, self.name)

    async def create(self) -> None:
        await admin_sql(self.base_dsn, f"CREATE SCHEMA {self.name}")
        await migrate(self.dsn)

    async def drop(self) -> None:
        await admin_sql(self.base_dsn, f"DROP SCHEMA IF EXISTS {self.name} CASCADE")


@pytest.fixture
async def schema(test_services: TestServices) -> AsyncIterator[IsolatedSchema]:
    """A migrated schema of its own for one test, dropped afterwards."""
    isolated = IsolatedSchema(test_services.database_url)
    await isolated.create()
    try:
        yield isolated
    finally:
        await isolated.drop()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


_EXIT_STATUS = pytest.StashKey[int]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Cleanups run last-added first: this one, added before pytest's own, runs after all of them.
    config.add_cleanup(lambda: _exit_without_finalizing(config))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


def _exit_without_finalizing(config: pytest.Config) -> None:
    """The suite's process ends as `orders-service` does (service.process_exit): psqlpy's threads,
    which the fixtures used, may otherwise abort the interpreter as it finalizes, after a run
    that passed."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is not None:
        exit_now(status)
