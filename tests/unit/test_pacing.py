"""The pacer's count of changes handed out and not acknowledged, against scripted TCP readings."""

from __future__ import annotations

import asyncio

from service.http.pacing import Pacer
from service.http.tcp_acks import Acks


class Readings:
    """What the kernel would say: set `now` to what the client has acknowledged so far."""

    def __init__(self) -> None:
        self.now: Acks | None = Acks(0, 0)
        self.asked = 0

    def reading(self) -> Acks | None:
        self.asked += 1
        return self.now


def _hand(pacer: Pacer, chunks: int, size: int = 100, changes: int = 1) -> None:
    for _ in range(chunks):
        pacer.handed(size, changes)


async def test_without_readings_a_stream_is_never_behind() -> None:
    pacer = Pacer(None, limit=2)
    _hand(pacer, 100)
    assert not pacer.behind
    pacer.idle()


async def test_it_is_behind_past_the_limit_and_asks_nothing_before() -> None:
    readings = Readings()
    pacer = Pacer(readings, limit=3)
    pacer.handed(20, 0)  # the opening comment
    _hand(pacer, 3)
    assert not pacer.behind
    _hand(pacer, 1)
    assert pacer.behind
    assert readings.asked == 0


async def test_caught_up_returns_once_the_client_acknowledged_enough() -> None:
    readings = Readings()
    pacer = Pacer(readings, limit=1)
    _hand(pacer, 2, changes=2)  # 4 changes in 200 bytes
    readings.now = Acks(150, 50)  # the second chunk is not wholly acknowledged: 2 changes behind still
    waiting = asyncio.create_task(pacer.caught_up(lambda: False))
    await asyncio.sleep(0.05)
    assert not waiting.done() and pacer.behind
    readings.now = Acks(200, 0)
    await asyncio.wait_for(waiting, 2)
    assert not pacer.behind


async def test_a_batch_counts_all_its_changes() -> None:
    readings = Readings()
    pacer = Pacer(readings, limit=10)
    pacer.handed(1000, 11)
    assert pacer.behind
    readings.now = Acks(1000, 0)
    await pacer.caught_up(lambda: False)
    assert not pacer.behind


async def test_waiting_stops_when_the_watch_ends_meanwhile() -> None:
    readings = Readings()
    pacer = Pacer(readings, limit=1)
    _hand(pacer, 5)
    ending = False
    waiting = asyncio.create_task(pacer.caught_up(lambda: ending))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    ending = True  # e.g. the watcher's buffer overflowed while the client read nothing
    await asyncio.wait_for(waiting, 2)
    assert pacer.behind  # still: what comes next ends the stream


async def test_a_connection_that_cannot_be_read_any_more_stops_the_pacing() -> None:
    readings = Readings()
    pacer = Pacer(readings, limit=1)
    _hand(pacer, 5)
    readings.now = None
    await asyncio.wait_for(pacer.caught_up(lambda: False), 1)
    _hand(pacer, 5)
    assert not pacer.behind


async def test_an_idle_drained_connection_rebases_the_count_on_what_was_acknowledged() -> None:
    readings = Readings()
    pacer = Pacer(readings, limit=1)
    pacer.handed(20, 0)
    _hand(pacer, 2)
    # The response's head and the chunks' framing are acknowledged too: 300 bytes, not 220.
    readings.now = Acks(300, 0)
    pacer.idle()
    assert not pacer.behind
    _hand(pacer, 3)
    assert pacer.behind
    readings.now = Acks(300 + 150, 150)  # one and a half of the three chunks since
    task = asyncio.create_task(pacer.caught_up(lambda: False))
    await asyncio.sleep(0.05)
    assert not task.done()  # two unacknowledged: more than the limit
    readings.now = Acks(300 + 200, 100)
    await asyncio.wait_for(task, 2)
    assert not pacer.behind


async def test_an_idle_connection_still_holding_bytes_keeps_the_count() -> None:
    readings = Readings()
    pacer = Pacer(readings, limit=1)
    _hand(pacer, 3)
    readings.now = Acks(100, 200)  # the client stopped reading: the kernel holds the rest
    pacer.idle()
    assert pacer.behind
