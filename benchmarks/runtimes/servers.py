"""How each runtime variant is started, and the process-tree figures the comparison reads.

The three variants serve the same `RestApi` (service/http/api.py) from the same settings:

- rsgi:  the production path, `orders-service serve --roles http` (supervisor + granian RSGI);
- asgi:  granian's ASGI interface over benchmarks/runtimes/asgi.py (`python -m benchmarks.runtimes.asgi`);
- robyn: robyn over benchmarks/runtimes/robyn_app.py (`python -m benchmarks.runtimes.robyn_app`).

Each reads PORT, BIND, HTTP_WORKERS, DATABASE_URL, REDIS_URL... from the environment, so the same
worker count and database are given to each. The e2e tests start them through this module too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

import httpx

from benchmarks.processes import descendants, free_port, start_until_ready

RUNTIMES: dict[str, list[str]] = {
    "rsgi": [sys.executable, "-m", "service", "serve", "--roles", "http"],
    "asgi": [sys.executable, "-m", "benchmarks.runtimes.asgi"],
    "robyn": [sys.executable, "-m", "benchmarks.runtimes.robyn_app"],
}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class RuntimeServer:
    """One variant's process tree on its own port."""

    def __init__(
        self,
        runtime: str,
        database_url: str,
        redis_url: str,
        workers: int,
        *,
        shutdown_timeout: float = 10.0,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.runtime = runtime
        self.port = free_port()
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "GRPC_PORT": str(free_port()),
            "PPROF_PORT": str(free_port()),
            "BIND": "127.0.0.1",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "EVENTS_STREAM": f"orders-runtimes-{uuid.uuid4().hex[:8]}",
            "HTTP_WORKERS": str(workers),
            "SHUTDOWN_TIMEOUT": str(shutdown_timeout),
            "MIGRATE_ON_START": "false",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.metrics_dir: str | None = None
        if runtime != "rsgi":
            # What `serve` gives its role processes: Prometheus figures shared between workers
            # through files (each request updates them), so every variant pays the same for metrics.
            self.metrics_dir = tempfile.mkdtemp(prefix="orders-metrics-")
            self.env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        self.log_file = tempfile.NamedTemporaryFile(prefix=f"orders-{runtime}-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60.0) -> RuntimeServer:
        self.process = start_until_ready(
            RUNTIMES[self.runtime],
            self.env,
            self.log_file,
            lambda _pid: httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200,
            timeout,
            name=self.runtime,
            not_yet=(httpx.HTTPError, OSError),
        )
        return self

    def tree(self) -> list[int]:
        return [self.pid, *descendants(self.pid)]

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None when the process is still running after `timeout` seconds."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL the whole tree (robyn's processes do not all stop on SIGTERM)."""
        if self.process is None:
            return
        for pid in reversed(self.tree()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._remove_metrics_dir()

    def _remove_metrics_dir(self) -> None:
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self.metrics_dir = None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL the tree if it has not exited within `timeout` seconds."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.terminate()
        code = self.wait(timeout)
        if code is None:
            self.kill()
        else:
            self.kill_leftovers()
        return code

    def kill_leftovers(self) -> None:
        """Processes of the session that outlived the main one (e.g. orphaned workers)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self._remove_metrics_dir()

    def logs(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def remove_log(self) -> None:
        """The log holds an access line per request: gigabytes after a benchmark."""
        self.log_file.close()
        Path(self.log_file.name).unlink(missing_ok=True)
