"""The idempotency-key purge loop the worker role runs beside the relay and the consumer."""

from __future__ import annotations

import asyncio
import logging

from service.domain import StoreUnavailable
from service.events.stream import sleep_unless
from service.orders import OrderService

# The name these lines have always been logged under (the loop lived in service/events/worker.py).
log = logging.getLogger("service.events.worker")

PURGE_BATCH = 1000


async def purge_idempotency_keys(service: OrderService, stop: asyncio.Event, interval: float) -> None:
    """Delete expired idempotency keys in batches, every `interval` seconds."""
    while not stop.is_set():
        purged = 0
        try:
            while not stop.is_set():
                count = await service.purge_expired_idempotency_keys(PURGE_BATCH)
                purged += count
                if count < PURGE_BATCH:
                    break
        except StoreUnavailable as exc:
            log.warning("idempotency key purge skipped: database unavailable", extra={"error": repr(exc)})
        except Exception:
            log.exception("idempotency key purge failed")
        if purged:
            log.info("expired idempotency keys purged", extra={"count": purged})
        await sleep_unless(stop, interval)
