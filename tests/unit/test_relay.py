"""The outbox relay on the fakes (memory outbox, fake publisher): order, batches, marks, failures, one active."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from service.cursor import CursorCodec
from service.events import relay as relay_module
from service.events.relay import Relay
from service.orders import OrderService
from service.ports import OutboxRecord, PublishFailed
from service.store.memory import MemoryOrderStore
from service.store.memory_outbox import MemoryOutbox
from tests.unit.fakes import FakeClock, SequentialIds


class FakePublisher:
    """Records each batch; `failures` publishes fail first; `on_publish` sees each batch before it succeeds."""

    def __init__(self, failures: int = 0, on_publish: Callable[[Sequence[OutboxRecord]], None] | None = None) -> None:
        self.batches: list[list[OutboxRecord]] = []
        self.attempts: list[list[int]] = []
        self.failures = failures
        self.on_publish = on_publish

    @property
    def system(self) -> str:
        return "Fake"

    @property
    def destination(self) -> str:
        return "fake-stream"

    async def publish(self, records: Sequence[OutboxRecord]) -> None:
        self.attempts.append([record.id for record in records])
        if self.failures:
            self.failures -= 1
            raise PublishFailed("fake transport down") from ConnectionError("down")
        if self.on_publish is not None:
            self.on_publish(records)
        self.batches.append(list(records))

    @property
    def published_ids(self) -> list[int]:
        return [record.id for batch in self.batches for record in batch]


@pytest.fixture
def outbox() -> MemoryOutbox:
    return MemoryOutbox()


@pytest.fixture
def service(outbox: MemoryOutbox) -> OrderService:
    return OrderService(MemoryOrderStore(outbox), FakeClock(), SequentialIds(), CursorCodec(b"test-key"))


async def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Relay], asyncio.Event]]:
    """Starts relays; stops each and waits for it at the end of the test."""
    started: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def start(relay: Relay) -> asyncio.Event:
        stop = asyncio.Event()
        started.append((stop, asyncio.create_task(relay.run(stop))))
        return stop

    yield start
    for stop, _ in started:
        stop.set()
    await asyncio.wait_for(asyncio.gather(*(task for _, task in started)), 5)


async def add_orders(service: OrderService, count: int) -> None:
    for i in range(count):
        await service.create(f"p{i}", 1)


async def test_publishes_in_outbox_order_and_marks_every_row(
    service: OrderService, outbox: MemoryOutbox, running: Callable[[Relay], asyncio.Event]
) -> None:
    await add_orders(service, 4)
    order = (await service.create("changed", 1)).order
    await service.update(str(order.id), quantity=2)
    await service.delete(str(order.id))
    publisher = FakePublisher()
    relay = Relay(outbox, publisher, batch_size=3, poll_interval=60.0)
    running(relay)
    await wait_until(lambda: relay.published_total == 7)
    assert publisher.published_ids == [record.id for record in outbox.records] == list(range(1, 8))
    published = [record for batch in publisher.batches for record in batch]
    assert [record.event_type for record in published] == ["order.created"] * 5 + ["order.updated", "order.deleted"]
    assert outbox.published == set(range(1, 8))
    assert (await outbox.backlog()).unpublished == 0


async def test_batch_size_is_respected_and_a_full_batch_reads_again_at_once(
    service: OrderService, outbox: MemoryOutbox, running: Callable[[Relay], asyncio.Event]
) -> None:
    await add_orders(service, 7)
    publisher = FakePublisher()
    # A 60 s poll: only reading again at once after a full batch gets all 7 out within the wait.
    relay = Relay(outbox, publisher, batch_size=3, poll_interval=60.0)
    running(relay)
    await wait_until(lambda: relay.published_total == 7)
    assert [len(batch) for batch in publisher.batches] == [3, 3, 1]


async def test_rows_added_while_idle_wake_the_relay(
    service: OrderService, outbox: MemoryOutbox, running: Callable[[Relay], asyncio.Event]
) -> None:
    publisher = FakePublisher()
    relay = Relay(outbox, publisher, batch_size=10, poll_interval=60.0)
    running(relay)
    await wait_until(lambda: relay.active)
    await asyncio.sleep(0.01)  # the first (empty) read is done: the relay now waits for 60 s or a notification
    await add_orders(service, 2)
    await wait_until(lambda: relay.published_total == 2)
    assert publisher.published_ids == [1, 2]


async def test_a_row_is_marked_only_after_its_publish_succeeded(
    service: OrderService, outbox: MemoryOutbox, running: Callable[[Relay], asyncio.Event]
) -> None:
    await add_orders(service, 5)
    marked_while_publishing: list[bool] = []

    def look(records: Sequence[OutboxRecord]) -> None:
        marked_while_publishing.extend(record.id in outbox.published for record in records)

    relay = Relay(outbox, FakePublisher(on_publish=look), batch_size=2, poll_interval=60.0)
    running(relay)
    await wait_until(lambda: relay.published_total == 5)
    assert marked_while_publishing == [False] * 5
    assert outbox.published == {1, 2, 3, 4, 5}


async def test_nothing_is_marked_while_the_publisher_fails_and_it_is_published_on_recovery(
    service: OrderService, outbox: MemoryOutbox, running: Callable[[Relay], asyncio.Event]
) -> None:
    await add_orders(service, 3)
    publisher = FakePublisher(failures=2)
    relay = Relay(outbox, publisher, batch_size=10, poll_interval=60.0)
    running(relay)
    await wait_until(lambda: len(publisher.attempts) >= 2)
    assert outbox.published == set() and publisher.batches == []
    await wait_until(lambda: relay.published_total == 3)  # after the streak's backoff (0.1 s, then 0.2 s)
    assert publisher.attempts == [[1, 2, 3]] * 3  # the same rows each time, none skipped
    assert publisher.published_ids == [1, 2, 3] and outbox.published == {1, 2, 3}


async def test_only_one_of_two_relays_is_active_and_the_other_takes_over(
    service: OrderService,
    outbox: MemoryOutbox,
    running: Callable[[Relay], asyncio.Event],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay_module, "LOCK_RETRY_SECONDS", 0.01)
    publishers = [FakePublisher(), FakePublisher()]
    relays = [Relay(outbox, publisher, batch_size=4, poll_interval=60.0) for publisher in publishers]
    stops = [running(relay) for relay in relays]
    await wait_until(lambda: any(relay.active for relay in relays))
    await asyncio.sleep(0.05)  # the other has tried the lock several times meanwhile
    assert sum(relay.active for relay in relays) == 1
    first = next(i for i, relay in enumerate(relays) if relay.active)
    await add_orders(service, 6)
    await wait_until(lambda: relays[first].published_total == 6)
    assert publishers[1 - first].batches == []

    stops[first].set()
    await wait_until(lambda: relays[1 - first].active)
    await add_orders(service, 3)
    await wait_until(lambda: relays[1 - first].published_total == 3)
    assert not relays[first].active
    # exactly once each, in outbox order, across the hand-over
    assert publishers[first].published_ids + publishers[1 - first].published_ids == list(range(1, 10))
