"""Starts the real `orders-service serve` on free ports and talks to it over sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from benchmarks.processes import ServiceProcess
from tests.conftest import IsolatedSchema, TestServices


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
    import asyncio

    isolated = IsolatedSchema(test_services.database_url)
    asyncio.run(isolated.create())
    proc = ServiceProcess(isolated.dsn, test_services.redis_url, "http", {})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        asyncio.run(isolated.drop())
