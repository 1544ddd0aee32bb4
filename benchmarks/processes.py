"""Starting the service as a child process and looking at its process tree through /proc.

Shared by the benchmark commands and the tests that start real `orders-service` processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    """Direct children of every thread of `pid` (a process may fork from any of its threads)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found.extend(int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, parents before their children."""
    return [d for c in children(pid) for d in (c, *descendants(c))]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the given processes (all their threads), from /proc/<pid>/stat; a
    process gone meanwhile counts nothing."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def command_line(pid: int) -> list[str]:
    """The arguments `pid` was started with; empty once it has gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def role_of(arguments: list[str]) -> str | None:
    """The role an `orders-service role <role>` command line runs; None for any other process."""
    if "role" in arguments[:-1]:
        return arguments[arguments.index("role") + 1]
    return None


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB; 0 once it has gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_until_ready(
    command: Sequence[str],
    env: Mapping[str, str],
    log: IO[Any],
    ready: Callable[[int], bool],
    timeout: float,
    name: str = "the service",
    not_yet: tuple[type[BaseException], ...] = (OSError,),
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `command` in a session of its own and poll `ready(pid)` until it holds (an exception
    of a `not_yet` type, such as a refused connection, counts as not ready).

    Raises RuntimeError with the log when the process exits first or `ready(pid)` never holds (its
    whole process group is then killed, so nothing is left behind).
    """
    process = subprocess.Popen(
        list(command), env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited early ({process.returncode}):\n{_tail(log)}")
        with contextlib.suppress(*not_yet):
            if ready(process.pid):
                return process
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    raise RuntimeError(f"{name} did not become ready within {timeout} s:\n{_tail(log)}")


def _tail(log: IO[Any], limit: int = 20_000) -> str:
    name = getattr(log, "name", None)
    if not isinstance(name, str):
        return "(no log file)"
    return Path(name).read_text(errors="replace")[-limit:]


class ServiceProcess:
    """One `orders-service serve` process tree on free ports, with an events stream of its own.

    `extra_env` overrides the defaults below (and anything else the service reads); `name` goes
    into the stream's and the log file's names; `source` runs the service from another checkout
    of the project (its own `service` package first on the path, see benchmarks.revisions).
    """

    DEFAULTS: Mapping[str, str] = {
        "HTTP_WORKERS": "2",
        "GRPC_WORKERS": "1",
        "LOG_LEVEL": "INFO",
        "SHUTDOWN_TIMEOUT": "15",
    }

    def __init__(
        self,
        database_url: str,
        redis_url: str,
        roles: str = "http,grpc,worker",
        extra_env: Mapping[str, str] | None = None,
        *,
        name: str = "test",
        source: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        self.pprof_port = free_port()
        self.stream = f"orders-{name}-{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "GRPC_PORT": str(self.grpc_port),
            "PPROF_PORT": str(self.pprof_port),
            "BIND": "127.0.0.1",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "EVENTS_STREAM": self.stream,
            **self.DEFAULTS,
            "ROLES": roles,
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
            **({"PYTHONPATH": str(source)} if source is not None else {}),
        }
        self.source = source
        self.log_file = tempfile.NamedTemporaryFile(prefix=f"orders-{name}-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(
        self,
        wait_for_grpc: bool = False,
        timeout: float = 30.0,
        ready_path: str = "/health",
        also: Callable[[int], bool] | None = None,
    ) -> None:
        """Start and wait until `ready_path` answers 200 (and the gRPC port accepts, and `also(pid)`)."""

        def ready(pid: int) -> bool:
            if httpx.get(f"{self.base_url}{ready_path}", timeout=0.5).status_code != 200:
                return False
            if wait_for_grpc:
                with socket.create_connection(("127.0.0.1", self.grpc_port), timeout=0.5):
                    pass
            return also is None or also(pid)

        self.process = start_until_ready(
            [sys.executable, "-m", "service", "serve"],
            self.env,
            self.log_file,
            ready,
            timeout,
            not_yet=(httpx.HTTPError, OSError),
            cwd=self.source,
        )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; kill the whole process tree if it does not stop in time (then None)."""
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
