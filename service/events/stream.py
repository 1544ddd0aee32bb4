"""The stream entry format and the Redis names of one events stream."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC

import msgspec

from service.ports import OutboxRecord

log = logging.getLogger(__name__)

Fields = dict[bytes, bytes]


class StreamNames(msgspec.Struct, frozen=True):
    stream: str
    group: str

    @property
    def dlq(self) -> str:
        return f"{self.stream}.dlq"


def entry_fields(record: OutboxRecord) -> dict[str, str]:
    """The fields of the stream entry of one outbox row (`event` and `payload` as the seed's)."""
    occurred = record.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    fields = {
        "event": record.event_type,
        "payload": record.payload,
        "event_id": record.event_id,
        "occurred_at": occurred,
        "request_id": record.request_id or "",
    }
    if record.traceparent:
        fields["traceparent"] = record.traceparent
    if record.owner is not None:  # who owns the order, and who changed it: the stream is an audit trail
        fields["owner"] = record.owner
    if record.actor is not None:
        fields["actor"] = record.actor
    return fields


_encode_entries = msgspec.msgpack.Encoder().encode


def packed_entries(records: Sequence[OutboxRecord]) -> bytes:
    """The entries of `records` as the publish script takes them: one MessagePack array holding,
    per entry, its fields and values in turn."""
    return _encode_entries([[part for pair in entry_fields(record).items() for part in pair] for record in records])


def text(fields: Fields, name: str) -> str:
    value = fields.get(name.encode())
    return "" if value is None else value.decode("utf-8", "replace")


class FailureStreak:
    """Logs the first failure of a streak and the recovery, not every attempt; gives the backoff."""

    def __init__(self, what: str, first_delay: float = 0.1, max_delay: float = 5.0) -> None:
        self._what = what
        self._first = first_delay
        self._max = max_delay
        self._failures = 0
        self._since = 0.0

    def failed(self, exc: BaseException) -> float:
        """Record one failed attempt; returns how long to wait before the next one."""
        if self._failures == 0:
            self._since = time.monotonic()
            log.warning(f"{self._what} unavailable; retrying with backoff", extra={"error": repr(exc)})
        self._failures += 1
        return float(min(self._max, self._first * 2 ** min(self._failures - 1, 16)))

    def succeeded(self) -> None:
        if self._failures:
            log.info(
                f"{self._what} available again",
                extra={"failed_attempts": self._failures, "outage_s": round(time.monotonic() - self._since, 3)},
            )
            self._failures = 0


async def sleep_unless(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    """Sleep `seconds`, or less if `stop` (or `wake`) is set meanwhile."""
    events = [stop] if wake is None else [stop, wake]
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
