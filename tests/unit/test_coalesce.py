"""Coalescer: calls made in one loop turn go out as one batch, each caller gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from service.store.coalesce import Coalescer


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on

    async def run(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await asyncio.sleep(0)
        if self.fail_on in items:
            raise RuntimeError("batch failed")
        return [item * 10 for item in items]


async def test_calls_of_one_loop_turn_share_one_batch_and_get_their_own_results() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.run)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(5)))
    assert results == [0, 10, 20, 30, 40]
    assert recorder.batches == [[0, 1, 2, 3, 4]]
    assert coalescer.batches == 1


async def test_max_batch_splits_and_one_sends_each_alone() -> None:
    recorder = Recorder()
    results = await asyncio.gather(*(Coalescer(recorder.run, max_batch=2).submit(i) for i in range(1)))
    assert results == [0]
    split = Recorder()
    coalescer = Coalescer(split.run, max_batch=2)
    assert await asyncio.gather(*(coalescer.submit(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert split.batches == [[0, 1], [2, 3], [4]]
    alone = Recorder()
    single = Coalescer(alone.run, max_batch=1)
    await asyncio.gather(*(single.submit(i) for i in range(3)))
    assert alone.batches == [[0], [1], [2]]


async def test_a_failed_batch_fails_each_of_its_callers_only() -> None:
    recorder = Recorder(fail_on=3)
    coalescer = Coalescer(recorder.run, max_batch=2)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(5)), return_exceptions=True)
    assert results[:2] == [0, 10] and results[4] == 40
    assert all(isinstance(r, RuntimeError) for r in results[2:4])
    with pytest.raises(RuntimeError):
        await coalescer.submit(3)


class Gate:
    """A batch runner that holds every batch until released, to see what waits behind it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def run(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.release.wait()
        return items


async def test_calls_arriving_while_the_batches_in_flight_run_wait_and_go_together() -> None:
    gate = Gate()
    coalescer = Coalescer(gate.run, max_in_flight=1)
    first = asyncio.ensure_future(coalescer.submit(0))
    await asyncio.sleep(0.01)  # the first batch is running now
    later = [asyncio.ensure_future(coalescer.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0.01)
    later.append(asyncio.ensure_future(coalescer.submit(3)))  # another loop turn, still waiting
    await asyncio.sleep(0.01)
    assert gate.batches == [[0]]
    gate.release.set()
    assert await asyncio.gather(first, *later) == [0, 1, 2, 3]
    assert gate.batches == [[0], [1, 2, 3]]


async def test_up_to_max_in_flight_batches_run_at_once() -> None:
    gate = Gate()
    coalescer = Coalescer(gate.run, max_in_flight=2)
    calls = [asyncio.ensure_future(coalescer.submit(0))]
    await asyncio.sleep(0.01)
    calls.append(asyncio.ensure_future(coalescer.submit(1)))
    await asyncio.sleep(0.01)
    calls += [asyncio.ensure_future(coalescer.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0.01)
    assert gate.batches == [[0], [1]]
    gate.release.set()
    assert await asyncio.gather(*calls) == [0, 1, 2, 3]
    assert gate.batches == [[0], [1], [2, 3]]


async def test_a_full_batch_goes_at_once_even_while_others_run() -> None:
    gate = Gate()
    coalescer = Coalescer(gate.run, max_batch=2, max_in_flight=1)
    calls = [asyncio.ensure_future(coalescer.submit(0))]
    await asyncio.sleep(0.01)
    calls += [asyncio.ensure_future(coalescer.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0.01)
    assert gate.batches == [[0], [1, 2]]
    gate.release.set()
    assert await asyncio.gather(*calls) == [0, 1, 2]


async def test_calls_wait_for_a_free_slot_at_most_max_wait() -> None:
    gate = Gate()
    coalescer = Coalescer(gate.run, max_in_flight=1, max_wait=0.05)
    stuck = asyncio.ensure_future(coalescer.submit(0))
    await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(coalescer.submit(1))
    await asyncio.sleep(0.02)
    assert gate.batches == [[0]]  # still within max_wait
    await asyncio.sleep(0.06)
    assert gate.batches == [[0], [1]]  # the stuck batch no longer holds it back
    gate.release.set()
    assert await asyncio.gather(stuck, waiting) == [0, 1]
