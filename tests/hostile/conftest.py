"""One real `orders-service serve` (http + grpc roles) shared by the hostile-input tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import TestServices
from tests.e2e.conftest import ServiceProcess, isolated_service

CURSOR_SECRET = "hostile-input-cursor-secret-of-32-bytes-or-more"


@pytest.fixture(scope="package")
def hostile_service(test_services: TestServices) -> Iterator[ServiceProcess]:
    env = {"CURSOR_SECRET": CURSOR_SECRET}
    with isolated_service(test_services, "http,grpc", env, wait_for_grpc=True) as (proc, _):
        yield proc
