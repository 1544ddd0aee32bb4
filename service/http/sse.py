"""Server-Sent Events framing of the change feed (GET /orders/changes)."""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from service.ports import FeedEntry

CONTENT_TYPE = "text/event-stream"
OPENING = b": watching\n\n"  # sent first, so that the response starts (and proxies see it) at once
HEARTBEAT = b": keep-alive\n\n"
_encode = msgspec.json.Encoder().encode


def error_event(problem: bytes) -> bytes:
    """The stream's last event when it cannot go on: `event: error` with a problem+json body."""
    return b"event: error\ndata: " + problem + b"\n\n"


class ChangeFrames:
    """The SSE frame of each feed entry, encoded once for all the watchers it goes to."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._encoded: OrderedDict[str, bytes] = OrderedDict()

    def frame(self, entry: FeedEntry) -> bytes:
        encoded = self._encoded.get(entry.cursor)
        if encoded is None:
            # JSON has no raw newline, so the order is one `data:` line.
            encoded = self._encoded[entry.cursor] = b"id: %s\nevent: %s\ndata: %s\n\n" % (
                entry.cursor.encode(),
                entry.event.encode(),
                _encode(entry.order),
            )
            if len(self._encoded) > self._capacity:
                self._encoded.popitem(last=False)
        return encoded
