"""The dead-letter stream: an entry that kept failing, kept with its error, and acknowledged."""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis

from service.events.entries import Entry
from service.events.stream import StreamNames, text

# The name these lines have always been logged under.
log = logging.getLogger("service.events.consumer")


async def dead_letter(
    redis: aioredis.Redis, names: StreamNames, entry: Entry, error: str, *, maxlen: int | None
) -> None:
    """Write the entry to `<stream>.dlq` (its fields, the error, its id and deliveries) and
    acknowledge it, atomically (MULTI)."""
    fields: dict[Any, Any] = dict(entry.fields)
    fields.update({"error": error, "original_id": entry.id, "deliveries": str(entry.deliveries)})
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(names.dlq, fields, maxlen=maxlen, approximate=True)
        pipe.xack(names.stream, names.group, entry.id)
        await pipe.execute()
    log.error(
        "event dead-lettered",
        extra={
            "event": text(entry.fields, "event"),
            "entry_id": entry.id.decode(),
            "deliveries": entry.deliveries,
            "dlq": names.dlq,
            "error": error,
        },
    )
