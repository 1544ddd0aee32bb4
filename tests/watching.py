"""Clients of the change feed for the tests: an SSE reader and gRPC watch helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import redis.asyncio as aioredis

from service.grpc.pb import orders_pb2, orders_pb2_grpc


@dataclass
class Event:
    id: str | None = None
    event: str = "message"
    data: str = ""


@dataclass
class SseReader:
    """Events of one text/event-stream response; comments are counted, not returned."""

    lines: AsyncIterator[str]
    comments: list[str] = field(default_factory=list)

    async def next(self, timeout: float = 15.0) -> Event | None:
        """The next event, or None when the stream ended."""
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> Event | None:
        event = Event()
        seen = False
        async for line in self.lines:
            if line == "":
                if seen:
                    return event
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            seen = True
            if name == "id":
                event.id = value
            elif name == "event":
                event.event = value
            elif name == "data":
                event.data = value
        return None

    async def until_open(self, timeout: float = 15.0) -> None:
        """Wait for the opening comment: from then on the watch is registered."""

        async def first_comment() -> None:
            async for line in self.lines:
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    return

        await asyncio.wait_for(first_comment(), timeout)


async def stream_tip(redis_url: str, stream: str) -> str:
    """The id of the stream's last entry ("0-0" when empty): a cursor to watch from exactly here."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        last = await client.xrevrange(stream, count=1)
        return last[0][0].decode() if last else "0-0"
    finally:
        await client.aclose()


async def stream_ids(redis_url: str, stream: str, after: str) -> list[str]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return [raw.decode() for raw, _ in await client.xrange(stream, min=f"({after}", max="+")]
    finally:
        await client.aclose()


def grpc_watch(
    stub: orders_pb2_grpc.OrderServiceStub, order_ids: list[str] | None = None, after: str = ""
) -> grpc.aio.UnaryStreamCall[orders_pb2.WatchOrdersRequest, orders_pb2.OrderChange]:
    return stub.WatchOrders(orders_pb2.WatchOrdersRequest(order_ids=order_ids or [], after=after))


async def read_changes(call: object, count: int, timeout: float = 15.0) -> list[orders_pb2.OrderChange]:
    changes: list[orders_pb2.OrderChange] = []
    for _ in range(count):
        message = await asyncio.wait_for(call.read(), timeout)  # type: ignore[attr-defined]
        assert message is not grpc.aio.EOF, f"stream ended after {len(changes)} changes"
        changes.append(message)
    return changes


def sse_watch(client: httpx.AsyncClient, query: str = "", headers: dict[str, str] | None = None) -> Any:
    """A context manager of the streaming response of GET /orders/changes."""
    return client.stream("GET", f"/orders/changes{query}", headers=headers or {}, timeout=httpx.Timeout(30.0))
