"""Starting the service as a child process and looking at its process tree through /proc.

Shared by the benchmark commands and the tests that start real `orders-service` processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any


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
) -> subprocess.Popen[bytes]:
    """Start `command` in a session of its own and poll `ready(pid)` until it holds (an exception
    of a `not_yet` type, such as a refused connection, counts as not ready).

    Raises RuntimeError with the log when the process exits first or `ready(pid)` never holds (its
    whole process group is then killed, so nothing is left behind).
    """
    process = subprocess.Popen(
        list(command), env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
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
