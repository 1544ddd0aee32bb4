"""The outbox relay: publishes unpublished outbox rows to the events stream, in outbox order.

Exactly one relay is active per outbox table (a session-level PostgreSQL advisory lock held by a
dedicated session); the others stand by and retry the lock every second, so one takes over
within about a second of the holder's death. Each round: read up to `batch_size` unpublished rows
in id order, publish them (the Redis publisher: one script call), then mark them published. After
a round that found rows the relay waits `linger` before the next one, so that under load rounds
carry batches; an idle relay publishes the first row as soon as it is notified. A crash between
the publish and the mark publishes those rows again (at-least-once), never loses them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from service.domain import StoreUnavailable
from service.events.heartbeat import no_beat
from service.events.stream import FailureStreak, sleep_unless
from service.ports import EventPublisher, Outbox, PublishFailed, RelaySession

log = logging.getLogger(__name__)

LOCK_RETRY_SECONDS = 1.0


class Relay:
    def __init__(
        self,
        outbox: Outbox,
        publisher: EventPublisher,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        linger: float = 0.0,
        beat: Callable[[], None] = no_beat,
    ) -> None:
        """`beat`: called on every turn of the relay's loops (worker liveness)."""
        self._linger = linger
        self._beat = beat
        self._outbox = outbox
        self._publisher = publisher
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._postgres = FailureStreak("PostgreSQL (relay)")
        self._publish_streak = FailureStreak(f"{publisher.system} (relay)")
        self.published_total = 0
        self.active = False

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set; the batch in hand is published and marked before returning."""
        while not stop.is_set():
            self._beat()
            try:
                async with self._outbox.relay_session() as session:
                    if not await self._become_active(session, stop):
                        return
                    self._postgres.succeeded()
                    wake = asyncio.Event()
                    try:
                        await session.listen(wake.set)
                    except StoreUnavailable as exc:  # polling alone still works
                        log.warning("relay cannot LISTEN; polling only", extra={"error": repr(exc)})
                    log.info("relay active", extra={"stream": self._publisher.destination})
                    self.active = True
                    await self._pump(session, wake, stop)
            except (StoreUnavailable, OSError) as exc:
                await sleep_unless(stop, self._postgres.failed(exc))
            except Exception as exc:  # unexpected: keep the worker alive, but say so loudly
                log.exception("relay failed; restarting it")
                await sleep_unless(stop, self._postgres.failed(exc))
            finally:
                if self.active:
                    log.info("relay inactive", extra={"published_total": self.published_total})
                self.active = False

    async def _become_active(self, session: RelaySession, stop: asyncio.Event) -> bool:
        standby_logged = False
        while not stop.is_set():
            self._beat()
            if await session.try_lock():
                return True
            self._postgres.succeeded()
            if not standby_logged:
                log.info("relay standing by: another relay is active")
                standby_logged = True
            await sleep_unless(stop, LOCK_RETRY_SECONDS)
        return False

    async def _pump(self, session: RelaySession, wake: asyncio.Event, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._beat()
            wake.clear()  # before the read: a notification during it means "read again"
            records = await session.claim_batch(self._batch_size)
            if records:
                try:
                    await self._publisher.publish(records)
                except PublishFailed as exc:
                    # The streak logs the transport's own error, as it did before the port existed.
                    await sleep_unless(stop, self._publish_streak.failed(exc.__cause__ or exc))
                    continue
                self._publish_streak.succeeded()
                await session.mark_published([record.id for record in records])
                self.published_total += len(records)
                if len(records) == self._batch_size:
                    continue
                if self._linger > 0:
                    # Rows keep coming while the service is busy (a notification per statement):
                    # let them gather, so each round publishes a batch rather than a few rows.
                    await sleep_unless(stop, self._linger)
                    continue
            await sleep_unless(stop, self._poll_interval, wake)
