"""One real `orders-service serve` (http + grpc roles) shared by the hostile-input tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.conftest import IsolatedSchema, TestServices
from tests.e2e.conftest import ServiceProcess

CURSOR_SECRET = "hostile-input-cursor-secret-of-32-bytes-or-more"


@pytest.fixture(scope="package")
def hostile_service(test_services: TestServices) -> Iterator[ServiceProcess]:
    isolated = IsolatedSchema(test_services.database_url)
    asyncio.run(isolated.create())
    proc = ServiceProcess(isolated.dsn, test_services.redis_url, "http,grpc", {"CURSOR_SECRET": CURSOR_SECRET})
    proc.start(wait_for_grpc=True)
    try:
        yield proc
    finally:
        proc.stop()
        asyncio.run(isolated.drop())
