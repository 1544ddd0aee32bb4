"""Runs the calls made during one event-loop turn as one batch (one query instead of many).

psqlpy costs about the same CPU per query whether it reads one row or fifty, so under concurrent
load, point reads and plain inserts that arrive together are sent together. While `max_in_flight`
batches of one kind are already running, new calls wait for one of them to finish and then go
together: a transport that hands over one call per loop turn (grpc.aio does) still gets batches,
and under light load a call goes out at the end of its own loop turn, as before. Calls never wait
for a free slot longer than `max_wait`: when the running batches are stuck (no connection free,
PostgreSQL slow), the next batch goes anyway, so a call's wait stays bounded by the pool's own
acquire timeout rather than adding up behind the stuck batches.

Tracing: a caller may hand `submit` its database span; when the batch goes out, each such span
gets the batch's size (`db.operation.batch.size`). The statement itself has no span of its own:
it serves many requests (many traces) at once, and each request's span covers its wait for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from service.observability.tracing import BATCH_SIZE, Span

K = TypeVar("K")
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    def __init__(
        self,
        run_batch: Callable[[list[K]], Awaitable[list[V]]],
        max_batch: int = 256,
        max_in_flight: int = 1,
        max_wait: float = 0.05,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_in_flight = max(1, max_in_flight)
        self._max_wait = max_wait
        self._overdue: asyncio.TimerHandle | None = None  # sends the waiting calls after max_wait
        self._pending: list[tuple[K, asyncio.Future[V]]] = []
        self._scheduled = False
        self._spans: list[Span] = []  # of the pending calls that passed one
        self._running: set[asyncio.Task[None]] = set()  # strong references until each batch ends
        self.batches = 0

    async def submit(self, item: K, span: Span | None = None) -> V:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V] = loop.create_future()
        self._pending.append((item, future))
        if span is not None:
            self._spans.append(span)
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif not self._scheduled:
            if len(self._running) < self._max_in_flight:
                self._scheduled = True
                loop.call_soon(self._flush)
            elif self._overdue is None:
                self._overdue = loop.call_later(self._max_wait, self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        if self._overdue is not None:
            self._overdue.cancel()
            self._overdue = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        if self._spans:
            spans, self._spans = self._spans, []
            for span in spans:
                span.set_attribute(BATCH_SIZE, len(batch))
        self.batches += 1
        task = asyncio.ensure_future(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._pending and not self._scheduled:  # the calls that waited for a free slot go now
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _run(self, batch: list[tuple[K, asyncio.Future[V]]]) -> None:
        try:
            results = await self._run_batch([item for item, _ in batch])
        except BaseException as exc:  # every waiter gets the batch's failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
