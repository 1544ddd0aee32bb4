"""Hands a watcher's changes to the server only as fast as its client acknowledges them.

granian's response stream takes every chunk at once and buffers it (no backpressure), so a client
that stops reading would never back up into its watcher's bounded buffer: the server's memory
would grow instead. The pacer restores the backpressure from the client's TCP acknowledgements:
while more than `limit` changes handed out are unacknowledged, the stream hands out no more, its
watcher's buffer fills, and a watcher that cannot keep up is cut off (WatcherTooSlow) as over
gRPC, where HTTP/2 flow control does the same. The kernel is asked only when the client may be
more than `limit` behind (it cannot be otherwise) and, to correct the count, when the stream idles.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from service.http.tcp_acks import Acks

FIRST_POLL = 0.005  # seconds between readings while behind, doubling while the client takes nothing, up to
LAST_POLL = 0.5


class AckSource(Protocol):
    def reading(self) -> Acks | None:
        """Bytes the client acknowledged since the stream started; None once that cannot be told."""
        ...


class Pacer:
    """One stream's count of changes handed out and not acknowledged by its client."""

    def __init__(self, acks: AckSource | None, limit: int) -> None:
        self._acks = acks
        self._limit = limit
        self._bytes = 0  # body bytes handed to the server
        self._changes = 0  # changes handed to the server
        self._delivered = 0  # of those, acknowledged as of the last reading
        # Acknowledged bytes that are not the body's (the response's head, each chunk's framing), as
        # of the last re-basing; until the next one they count as body, so the count errs toward
        # the client being further along, never toward cutting off one that keeps up.
        self._overhead = 0
        # (body offset after a chunk, changes up to it) of the chunks with changes not wholly acknowledged
        self._unconfirmed: deque[tuple[int, int]] = deque()

    @property
    def behind(self) -> bool:
        """More than `limit` changes may be unacknowledged: wait for `caught_up` before handing more."""
        return self._changes - self._delivered > self._limit

    def handed(self, size: int, changes: int) -> None:
        """A chunk of `size` bytes holding `changes` changes goes to the server."""
        if self._acks is None:
            return
        self._bytes += size
        if changes:
            self._changes += changes
            self._unconfirmed.append((self._bytes, self._changes))

    def idle(self) -> None:
        """Nothing was handed out for a while: if the kernel holds nothing unacknowledged, the client
        has everything (the server flushes what it can at once), which re-bases the count exactly."""
        if self._acks is None:
            return
        reading = self._acks.reading()
        if reading is not None and reading.unacknowledged == 0:
            self._overhead = reading.acknowledged - self._bytes
            self._unconfirmed.clear()
            self._delivered = self._changes

    async def caught_up(self, give_up: Callable[[], bool]) -> None:
        """Wait until at most `limit` changes are unacknowledged, or `give_up()` (the watch ends)."""
        delay = FIRST_POLL
        while self.behind and not give_up():
            reading = self._acks.reading() if self._acks is not None else None
            if reading is None:  # the connection is going away, or cannot be read: stop pacing
                self._acks = None
                self._delivered = self._changes
                return
            delivered = self._delivered
            self._confirm(reading.acknowledged - self._overhead)
            if not self.behind:
                return
            if self._delivered > delivered:
                delay = FIRST_POLL
            await asyncio.sleep(delay)
            delay = min(delay * 2, LAST_POLL)

    def _confirm(self, body_bytes: int) -> None:
        unconfirmed = self._unconfirmed
        while unconfirmed and unconfirmed[0][0] <= body_bytes:
            self._delivered = unconfirmed.popleft()[1]
