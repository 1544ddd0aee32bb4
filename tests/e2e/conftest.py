"""Starts the real `orders-service serve` on free ports and talks to it over sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager

import grpc
import httpx
import pytest

from benchmarks.processes import ServiceProcess
from tests.conftest import IsolatedSchema, TestServices


def settled_ready(client: httpx.Client, expect: int, timeout: float = 10.0) -> httpx.Response:
    """`GET /ready` once it answers `expect` with every dependency checked: it reads state the
    workers refresh in the background, "unknown" in a worker that has not checked yet."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/ready")
        checked = "unknown" not in response.json()["checks"].values()
        if (response.status_code == expect and checked) or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


@asynccontextmanager
async def ready_channel(target: str) -> AsyncIterator[grpc.aio.Channel]:
    """An insecure gRPC channel to `target`, connected (within 10 s) before it is handed over."""
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        yield channel


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
