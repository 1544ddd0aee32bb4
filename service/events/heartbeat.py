"""Worker liveness: each loop of the worker role beats; a file's mtime says when the stalest did.

The relay and the consumer call `beat()` on every turn of their loops (a turn is bounded: a
poll interval, a blocking read of 1 s, a backoff of at most 5 s). `write_periodically` sets the
heartbeat file's modification time to the oldest of their last beats, so the file's age is the
age of the stalest loop: it grows when any loop hangs, or when the whole process is stopped. The
supervisor restarts a worker whose file is older than WORKER_HEARTBEAT_TIMEOUT, and the
Kubernetes liveness probe (`orders-service worker-alive`) checks the same files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

WRITE_INTERVAL = 1.0


def no_beat() -> None:
    return None


class Heartbeat:
    def __init__(self, loops: Iterable[str], clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last = dict.fromkeys(loops, clock())

    def beater(self, loop: str) -> Callable[[], None]:
        """What the loop named `loop` calls on each turn."""
        if loop not in self._last:
            raise ValueError(f"unknown loop {loop!r}")

        def beat() -> None:
            self._last[loop] = self._clock()

        return beat

    def oldest(self) -> float:
        """Wall-clock time of the stalest loop's last beat."""
        return min(self._last.values())


def touch(path: Path, at: float) -> None:
    """Create `path` if needed and set its modification time to `at` (atomic for readers)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    os.utime(path, (at, at))


def age(path: Path, now: float | None = None) -> float | None:
    """Seconds since the file's modification time; None when it does not exist."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return (time.time() if now is None else now) - mtime


async def write_periodically(path: Path, heartbeat: Heartbeat, stop: asyncio.Event) -> None:
    """Keep the file's mtime at the oldest loop's last beat until `stop`; remove it afterwards."""
    try:
        while not stop.is_set():
            touch(path, heartbeat.oldest())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WRITE_INTERVAL)
    finally:
        remove(path)


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
