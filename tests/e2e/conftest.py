"""Starts the real `orders-service serve` on free ports and talks to it over sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager

import pytest

from benchmarks.processes import ServiceProcess
from tests.conftest import IsolatedSchema, TestServices


@contextmanager
def isolated_service(
    test_services: TestServices,
    roles: str = "http",
    env: Mapping[str, str] | None = None,
    *,
    wait_for_grpc: bool = False,
    name: str = "test",
) -> Iterator[tuple[ServiceProcess, IsolatedSchema]]:
    """A running service in a schema of its own (for a fixture that outlives one test); stopped,
    and its schema dropped, afterwards."""
    isolated = IsolatedSchema(test_services.database_url)
    asyncio.run(isolated.create())
    try:
        proc = ServiceProcess(isolated.dsn, test_services.redis_url, roles, env, name=name)
        proc.start(wait_for_grpc=wait_for_grpc)
        try:
            yield proc, isolated
        finally:
            proc.stop()
    finally:
        asyncio.run(isolated.drop())


@pytest.fixture
async def service_schema(test_services: TestServices) -> AsyncIterator[IsolatedSchema]:
    isolated = IsolatedSchema(test_services.database_url)
    await isolated.create()
    try:
        yield isolated
    finally:
        await isolated.drop()


@pytest.fixture
def start_service(
    test_services: TestServices, service_schema: IsolatedSchema
) -> Iterator[type[ServiceProcess] | object]:
    """Factory: start_service(roles="http", **env) -> a running ServiceProcess, stopped at teardown."""
    started: list[ServiceProcess] = []

    def factory(roles: str = "http", wait_for_grpc: bool = False, **extra_env: str) -> ServiceProcess:
        proc = ServiceProcess(service_schema.dsn, test_services.redis_url, roles, extra_env)
        proc.start(wait_for_grpc=wait_for_grpc)
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def module_service(test_services: TestServices) -> Iterator[ServiceProcess]:
    """One service (http role) shared by the tests of a module, in its own schema."""
    with isolated_service(test_services) as (proc, _):
        yield proc
