"""The purge loops the worker role runs beside the relay and the consumer: expired idempotency keys,
and published outbox rows past OUTBOX_RETENTION."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from service.domain import StoreUnavailable
from service.events.stream import sleep_unless
from service.orders import OrderService
from service.ports import Outbox

# The name these lines have always been logged under (the loop lived in service/events/worker.py).
log = logging.getLogger("service.events.worker")

PURGE_BATCH = 1000


async def purge_in_batches(
    what: str, purge_batch: Callable[[int], Awaitable[int]], stop: asyncio.Event, interval: float
) -> None:
    """Every `interval` seconds, call `purge_batch(PURGE_BATCH)` until it removes fewer than that."""
    while not stop.is_set():
        purged = 0
        try:
            while not stop.is_set():
                count = await purge_batch(PURGE_BATCH)
                purged += count
                if count < PURGE_BATCH:
                    break
        except StoreUnavailable as exc:
            log.warning(f"{what} purge skipped: database unavailable", extra={"error": repr(exc)})
        except Exception:
            log.exception(f"{what} purge failed")
        if purged:
            log.info(f"{what} purged", extra={"count": purged})
        await sleep_unless(stop, interval)


async def purge_idempotency_keys(service: OrderService, stop: asyncio.Event, interval: float) -> None:
    """Delete expired idempotency keys in batches, every `interval` seconds."""
    await purge_in_batches("expired idempotency keys", service.purge_expired_idempotency_keys, stop, interval)


async def purge_published_events(outbox: Outbox, stop: asyncio.Event, interval: float) -> None:
    """Delete outbox rows published longer than the retention ago, in batches, every `interval` seconds."""
    await purge_in_batches("published outbox rows", outbox.purge_published, stop, interval)
