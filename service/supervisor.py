"""Starts the role processes, restarts any that crash, and stops them all gracefully on SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.events import heartbeat
from service.observability.admin import AdminServer, ProcessInfo, Profiler, children_of, started_at
from service.observability.metrics import mark_process_dead

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.2
_MAX_RESTART_DELAY = 30.0


@dataclass
class RoleProcess:
    role: str
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start_at: float = 0.0
    history: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"


class Supervisor:
    def __init__(
        self,
        role_counts: Mapping[str, int],
        env: Mapping[str, str],
        shutdown_timeout: float,
        *,
        metrics_dir: str | None = None,
        py_spy: str | None = None,
        heartbeat_dir: str | None = None,
        heartbeat_timeout: float = 30.0,
    ) -> None:
        """`metrics_dir`: the children's PROMETHEUS_MULTIPROC_DIR; `py_spy`: Settings.py_spy;
        `heartbeat_dir`: where worker processes keep their heartbeat files (None: not watched);
        a worker whose file is older than `heartbeat_timeout` seconds is killed and restarted."""
        self._env = dict(env)
        self._heartbeat_dir = Path(heartbeat_dir) if heartbeat_dir is not None else None
        self._heartbeat_timeout = heartbeat_timeout
        self._shutdown_timeout = shutdown_timeout
        self._metrics_dir = metrics_dir
        self._py_spy = py_spy
        self._stopping = False
        self._started_at = time.time()
        self.children = [RoleProcess(role, index) for role, count in role_counts.items() for index in range(count)]

    def heartbeat_file(self, child: RoleProcess) -> Path | None:
        if child.role != "worker" or self._heartbeat_dir is None:
            return None
        return self._heartbeat_dir / f"{child.name}.beat"

    def _start(self, child: RoleProcess) -> None:
        env = self._env
        beat_file = self.heartbeat_file(child)
        if beat_file is not None:
            beat_file.unlink(missing_ok=True)  # the predecessor's, not this process's
            env = {**env, "ORDERS_HEARTBEAT_FILE": str(beat_file)}
        # Its own process group, so that the role's own children (granian workers) can be
        # cleaned up with it if the role process dies.
        child.process = subprocess.Popen(
            [sys.executable, "-m", "service", "role", child.role], env=env, start_new_session=True
        )
        child.started_at = time.monotonic()
        log.info("role process started", extra={"child": child.name, "pid": child.process.pid})

    def _request_stop(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            log.info("shutdown requested", extra={"signal": signal.Signals(signum).name})
        self._stopping = True

    def processes(self) -> list[ProcessInfo]:
        """The supervisor, each running role process and their own children (e.g. granian workers)."""
        found = [ProcessInfo("supervisor", os.getpid(), self._started_at)]
        for child in self.children:
            process = child.process
            if process is None or process.poll() is not None:
                continue
            found.append(ProcessInfo(child.role, process.pid, started_at(process.pid)))
            found.extend(ProcessInfo(f"{child.role}-worker", pid, started_at(pid)) for pid in children_of(process.pid))
        return found

    def run(self, admin: tuple[str, int] | None = None) -> int:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        server = None
        if admin is not None:
            server = AdminServer(admin[0], admin[1], Profiler(self.processes, os.getpid(), py_spy=self._py_spy))
            server.start()
            log.info("admin port listening", extra={"bind": admin[0], "port": server.port})
        for child in self.children:
            self._start(child)
        try:
            while not self._stopping:
                self._watch()
                time.sleep(_POLL_SECONDS)
            return self._stop_all()
        finally:
            if server is not None:
                server.stop()

    def _watch(self) -> None:
        now = time.monotonic()
        for child in self.children:
            process = child.process
            if process is None:
                if now >= child.next_start_at:
                    self._start(child)
                continue
            code = process.poll()
            if code is None:
                self._kill_if_hung(child, process, now)
                continue
            child.restarts += 1
            child.history.append(code)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # orphaned workers would hold the port
            mark_process_dead(process.pid, self._metrics_dir)
            # Back off when a role keeps dying right after start, so a broken config cannot spin.
            lived = now - child.started_at
            delay = 0.5 if lived > 10 else min(_MAX_RESTART_DELAY, 0.5 * 2 ** min(child.restarts, 6))
            log.error(
                "role process exited unexpectedly; restarting",
                extra={"child": child.name, "pid": process.pid, "exit_code": code, "restart_in_s": delay},
            )
            child.process = None
            child.next_start_at = now + delay

    def _kill_if_hung(self, child: RoleProcess, process: subprocess.Popen[bytes], now: float) -> None:
        """SIGKILL a worker whose loops stopped beating (it is then restarted like a crashed one)."""
        beat_file = self.heartbeat_file(child)
        if beat_file is None:
            return
        silent = heartbeat.age(beat_file)
        if silent is None:  # not written yet: count from the start
            silent = now - child.started_at
        if silent <= self._heartbeat_timeout:
            return
        log.error(
            "worker heartbeat stopped; killing it",
            extra={"child": child.name, "pid": process.pid, "silent_s": round(silent, 1)},
        )
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def _stop_all(self) -> int:
        running = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._shutdown_timeout
        clean = True
        for process in running:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                log.error("role process did not stop in time; killing it", extra={"pid": process.pid})
                process.kill()
                process.wait()
                clean = False
        log.info("stopped", extra={"clean": clean})
        return 0 if clean else 1
