"""The worker role: outbox relay, stream consumer and the purges in one process.

`serve(settings)` runs until SIGTERM/SIGINT, then lets the relay finish its batch (publish and
mark) and the consumer the entries in hand, closes the pools and returns (exit code 0), all
within SHUTDOWN_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import uvloop

from service.app import Resources, build_consumer, build_outbox, build_relay, build_service
from service.config import Settings
from service.events.heartbeat import Heartbeat, write_periodically
from service.events.purge import purge_idempotency_keys, purge_published_events
from service.observability.metrics import PoolGauges, publish_periodically

# The name these lines have always been logged under (the role's code lived in service/events/worker.py).
log = logging.getLogger("service.events.worker")


async def run(settings: Settings) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    resources = Resources(settings, role="worker")
    publish_periodically(loop, PoolGauges("worker", resources.db.stats))
    try:
        service = build_service(settings, resources.db, resources.tracer)
        heartbeat = Heartbeat(("relay", "consumer"))
        relay = build_relay(settings, resources, heartbeat.beater("relay"))
        consumer = build_consumer(settings, resources, service, heartbeat.beater("consumer"))
        log.info(
            "worker started",
            extra={"stream": settings.events_stream, "group": settings.consumer_group, "consumer": consumer.name},
        )
        tasks = [
            asyncio.create_task(relay.run(stop), name="relay"),
            asyncio.create_task(consumer.run(stop), name="consumer"),
            asyncio.create_task(purge_idempotency_keys(service, stop, settings.purge_interval), name="purge"),
        ]
        if settings.outbox_retention > 0:  # 0: the relay deletes each batch once it is published
            purge_every = min(settings.purge_interval, settings.outbox_retention)
            outbox = build_outbox(settings, resources)
            tasks.append(asyncio.create_task(purge_published_events(outbox, stop, purge_every), name="outbox-purge"))
        if settings.heartbeat_file is not None:  # set by the supervisor for each worker process
            beats = write_periodically(Path(settings.heartbeat_file), heartbeat, stop)
            tasks.append(asyncio.create_task(beats, name="heartbeat"))
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
        if stopped not in done:  # a loop ended on its own: that is a bug; stop and let us be restarted
            log.error("worker task ended unexpectedly", extra={"tasks": [t.get_name() for t in done]})
            stop.set()
        log.info("worker stopping")
        # Leave time to close the pools within the shutdown timeout.
        _, pending = await asyncio.wait(tasks, timeout=max(0.1, settings.shutdown_timeout - 1.0))
        for task in pending:
            log.warning("worker task did not finish in time; cancelling it", extra={"task": task.get_name()})
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=0.5)
        failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
        for task in failed:
            log.error("worker task failed", extra={"task": task.get_name()}, exc_info=task.exception())
        log.info(
            "worker stopped",
            extra={"published_total": relay.published_total, "handled_total": consumer.handled_total},
        )
        return 1 if stopped not in done or failed else 0
    finally:
        await resources.aclose()


def serve(settings: Settings) -> None:
    """Run the worker role in this process (logging is configured by the caller)."""
    code = uvloop.run(run(settings))
    if code:
        raise SystemExit(code)
