"""Starts the real `orders-service serve` on free ports and talks to it over sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.processes import descendants, start_until_ready
from tests.conftest import IsolatedSchema, TestServices, free_port


class ServiceProcess:
    """One `orders-service serve` process tree with its own ports, schema and stream names."""

    def __init__(self, database_url: str, redis_url: str, roles: str, extra_env: dict[str, str]) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        self.pprof_port = free_port()
        self.stream = f"orders-test-{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "GRPC_PORT": str(self.grpc_port),
            "PPROF_PORT": str(self.pprof_port),
            "BIND": "127.0.0.1",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "EVENTS_STREAM": self.stream,
            "HTTP_WORKERS": "2",
            "GRPC_WORKERS": "1",
            "LOG_LEVEL": "INFO",
            "SHUTDOWN_TIMEOUT": "15",
            "ROLES": roles,
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        self.log_file = tempfile.NamedTemporaryFile(prefix="orders-e2e-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, wait_for_grpc: bool = False, timeout: float = 30.0) -> None:
        def ready(_pid: int) -> bool:
            healthy = httpx.get(f"{self.base_url}/health", timeout=0.5).status_code == 200
            return healthy and (not wait_for_grpc or self._grpc_answers())

        self.process = start_until_ready(
            [sys.executable, "-m", "service", "serve"],
            self.env,
            self.log_file,
            ready,
            timeout,
            not_yet=(httpx.HTTPError, OSError),
        )

    def _grpc_answers(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.grpc_port), timeout=0.5):
                return True
        except OSError:
            return False

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; kill the whole process group if it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in [*descendants(self.process.pid), self.process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait()
            return None

    def logs(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")


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
