"""The heartbeat file's age is the age of the stalest loop, so one hung loop is enough to show."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.events import heartbeat
from service.events.heartbeat import Heartbeat


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_file_carries_the_stalest_loops_last_beat(tmp_path: Path) -> None:
    clock = Clock()
    beats = Heartbeat(("relay", "consumer"), clock=clock)
    relay, consumer = beats.beater("relay"), beats.beater("consumer")
    clock.now += 10
    relay()
    consumer()
    clock.now += 20
    relay()  # the consumer hangs from here on
    path = tmp_path / "worker-0.beat"
    heartbeat.touch(path, beats.oldest())
    assert heartbeat.age(path, now=clock.now) == pytest.approx(20)
    assert heartbeat.age(tmp_path / "absent", now=clock.now) is None
    with pytest.raises(ValueError, match="purge"):
        beats.beater("purge")


async def test_the_writer_keeps_the_file_fresh_and_removes_it_on_stop(tmp_path: Path) -> None:
    beats = Heartbeat(("relay",))
    path = tmp_path / "worker-0.beat"
    stop = asyncio.Event()
    writer = asyncio.create_task(heartbeat.write_periodically(path, beats, stop))
    while not path.exists():
        await asyncio.sleep(0.01)
    age = heartbeat.age(path)
    assert age is not None and age < 60
    stop.set()
    await writer
    assert not path.exists()
