"""Admin/profiling port of the supervisor: py-spy driven over HTTP, for the service's own processes.

    GET /debug/pprof/                    index of processes (JSON; HTML with ?format=html)
    GET /debug/pprof/profile?seconds=N   py-spy record: flame graph SVG, speedscope JSON or raw
    GET /debug/pprof/dump                py-spy dump: the stack of every thread, as text

Only pids of the service's own processes are accepted; one recording runs at a time.
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

FORMATS = {
    "flamegraph": ("image/svg+xml", "svg"),
    "speedscope": ("application/json", "speedscope.json"),
    "raw": ("text/plain; charset=utf-8", "txt"),
}
_NO_PTRACE_HINTS = ("permission denied", "operation not permitted", "ptrace", "sys_ptrace")


@dataclass(frozen=True)
class ProcessInfo:
    role: str
    pid: int
    started_at: float


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def py_spy_path(configured: str | None) -> str:
    """`configured` (Settings.py_spy) when given, else the py-spy beside the interpreter, else on PATH."""
    if configured:
        return configured
    beside_python = Path(sys.executable).parent / "py-spy"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("py-spy")
    if found is None:
        raise AdminError(503, "py-spy is not installed")
    return found


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


def started_at(pid: int) -> float:
    """When the process started, as a Unix time (from /proc; now if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as kernel:
            boot = next(int(line.split()[1]) for line in kernel if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return time.time()


def _py_spy_failure(output: str) -> AdminError:
    if "No stack counts found" in output:
        return AdminError(
            422,
            "no samples were collected: the processes were idle; add idle=1 to include "
            "idle stacks, or record while the service is under load",
        )
    text = output.strip()[-800:]
    if any(hint in text.lower() for hint in _NO_PTRACE_HINTS):
        return AdminError(
            503,
            "py-spy cannot attach to the process: ptrace is not permitted here "
            f"(in a container, add the SYS_PTRACE capability). py-spy said: {text}",
        )
    return AdminError(503, f"py-spy failed: {text}")


class Profiler:
    """Runs py-spy against the service's processes; one recording at a time."""

    def __init__(self, processes: Callable[[], list[ProcessInfo]], root_pid: int, py_spy: str | None = None) -> None:
        self._processes = processes
        self._root_pid = root_pid
        self._py_spy = py_spy
        self._recording = threading.Lock()

    def _known_pid(self, raw: str | None) -> int | None:
        if raw is None or raw == "":
            return None
        if not raw.isdigit():
            raise AdminError(400, "pid must be a number")
        pid = int(raw)
        if pid not in {p.pid for p in self._processes()}:
            raise AdminError(404, f"pid {pid} is not one of this service's processes")
        return pid

    def record(self, query: dict[str, str]) -> tuple[str, str, bytes]:
        seconds = _int_param(query, "seconds", 10, 1, 120)
        rate = _int_param(query, "rate", 100, 1, 1000)
        fmt = query.get("format", "flamegraph")
        if fmt not in FORMATS:
            raise AdminError(400, f"format must be one of {', '.join(FORMATS)}")
        idle = query.get("idle", "0")
        if idle not in ("0", "1"):
            raise AdminError(400, "idle must be 0 or 1")
        pid = self._known_pid(query.get("pid"))
        if not self._recording.acquire(blocking=False):
            raise AdminError(409, "a recording is already running; try again when it ends")
        try:
            with tempfile.TemporaryDirectory(prefix="orders-profile-") as workdir:
                output = Path(workdir) / f"profile.{FORMATS[fmt][1]}"
                command = [
                    py_spy_path(self._py_spy),
                    "record",
                    "--nonblocking",
                    "--duration",
                    str(seconds),
                    "--rate",
                    str(rate),
                    "--format",
                    fmt,
                    "--output",
                    str(output),
                ]
                command += ["--pid", str(pid)] if pid is not None else ["--pid", str(self._root_pid), "--subprocesses"]
                if idle == "1":
                    command.append("--idle")
                result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
                if result.returncode != 0 or not output.exists():
                    raise _py_spy_failure(result.stderr + result.stdout)
                target = f"pid{pid}" if pid is not None else "all"
                filename = f"orders-service-{target}-{time.strftime('%Y%m%dT%H%M%S')}.{FORMATS[fmt][1]}"
                return FORMATS[fmt][0], filename, output.read_bytes()
        finally:
            self._recording.release()

    def dump(self, query: dict[str, str]) -> bytes:
        pid = self._known_pid(query.get("pid"))
        targets = [p for p in self._processes() if pid is None or p.pid == pid]
        sections = []
        for process in targets:
            result = subprocess.run(
                [py_spy_path(self._py_spy), "dump", "--nonblocking", "--pid", str(process.pid)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if result.returncode != 0:
                if pid is not None:
                    raise _py_spy_failure(result.stderr + result.stdout)
                sections.append(f"== {process.role} pid {process.pid}: py-spy failed: {result.stderr.strip()}\n")
                continue
            sections.append(f"== {process.role} pid {process.pid}\n{result.stdout}")
        return "\n".join(sections).encode()

    def index(self) -> list[dict[str, object]]:
        now = time.time()
        return [
            {
                "role": p.role,
                "pid": p.pid,
                "uptime_s": round(now - p.started_at, 1),
                "rss_bytes": rss_bytes(p.pid),
                "profile": f"/debug/pprof/profile?seconds=30&pid={p.pid}",
                "speedscope": f"/debug/pprof/profile?seconds=30&pid={p.pid}&format=speedscope",
                "dump": f"/debug/pprof/dump?pid={p.pid}",
            }
            for p in self._processes()
        ]


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise AdminError(400, f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _index_html(processes: list[dict[str, object]]) -> bytes:
    rows = "".join(
        f"<tr><td>{html.escape(str(p['role']))}</td><td>{p['pid']}</td><td>{p['uptime_s']}</td>"
        f'<td>{p["rss_bytes"]}</td><td><a href="{p["profile"]}">flame graph (30 s)</a> '
        f'<a href="{p["speedscope"]}">speedscope</a> <a href="{p["dump"]}">dump</a></td></tr>'
        for p in processes
    )
    page = (
        "<!doctype html><title>orders-service pprof</title><h1>orders-service processes</h1>"
        '<p><a href="/debug/pprof/profile?seconds=30">flame graph of all processes (30 s)</a> · '
        '<a href="/debug/pprof/dump">dump all</a></p>'
        "<table border=1 cellpadding=4><tr><th>role</th><th>pid</th><th>uptime s</th><th>RSS bytes</th>"
        f"<th>profile</th></tr>{rows}</table>"
    )
    return page.encode()


def _handler(profiler: Profiler) -> type[BaseHTTPRequestHandler]:
    class AdminHandler(BaseHTTPRequestHandler):
        server_version = "orders-service-admin"

        def log_message(self, format: str, *args: object) -> None:
            log.info("admin request", extra={"path": self.path.split("?")[0]})

        def _send(self, status: int, content_type: str, body: bytes, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            try:
                if parts.path in ("/debug/pprof", "/debug/pprof/"):
                    processes = profiler.index()
                    wants_html = query.get("format") == "html" or "text/html" in (self.headers.get("Accept") or "")
                    if wants_html:
                        self._send(200, "text/html; charset=utf-8", _index_html(processes))
                    else:
                        self._send(200, "application/json", json.dumps({"processes": processes}).encode())
                elif parts.path == "/debug/pprof/profile":
                    content_type, filename, body = profiler.record(query)
                    self._send(200, content_type, body, {"Content-Disposition": f'attachment; filename="{filename}"'})
                elif parts.path == "/debug/pprof/dump":
                    self._send(200, "text/plain; charset=utf-8", profiler.dump(query))
                else:
                    raise AdminError(404, "unknown admin path")
            except AdminError as exc:
                self._send(exc.status, "application/json", json.dumps({"error": exc.message}).encode())
            except subprocess.TimeoutExpired:
                self._send(504, "application/json", b'{"error": "py-spy did not finish in time"}')

    return AdminHandler


class AdminServer:
    def __init__(self, bind: str, port: int, profiler: Profiler) -> None:
        self._server = ThreadingHTTPServer((bind, port), _handler(profiler))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="admin", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
