"""Many watchers of the change feed in one client process: SSE over raw asyncio sockets, or gRPC
WatchOrders streams over a few grpc.aio channels. Driven by `benchmarks.watchers` through a pipe.

Every watcher keeps, for the changes after the gate cursor (the stream's last entry when the
measured run began), their count, a CRC-32 of the sequence of their cursors and the last cursor,
so that the parent can tell whether it received exactly the stream's entries, each once, in
order, without anyone storing millions of cursors. The first `timed` watchers of the process
also time every change they receive: client wall clock at receipt minus the order's
`updated_at` (the service's clock, taken just before the change's statement; one box, one clock).

Commands (tuples) from the parent and what the process answers:
    ("status",)                      -> {"connected", "ended", "before"} counts
    ("go", gate_cursor)              -> "ok"; from now on changes after the gate count
    ("end", last_cursor, count, crc, timeout)
                                     -> the report; waits until every watcher still open has
                                        received `last_cursor` (or `timeout`), then closes all
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any, cast
from urllib.parse import urlsplit

from benchmarks.histogram import Histogram

OPEN_BATCH = 100  # connections opened at once
_ID = re.compile(rb"^id: (\S+)$", re.M)
_STAMP = re.compile(rb'^data: .*?"updated_at":"([^"]+)"', re.M)
_ERROR = re.compile(rb'^event: error\ndata: .*?"type":"([^"]*)"', re.M)
_seconds: dict[str, float] = {}


def position(cursor: bytes) -> tuple[int, int]:
    ms, _, seq = cursor.partition(b"-")
    return int(ms), int(seq or 0)


def epoch(stamp: str) -> float:
    """Seconds since the epoch of an RFC 3339 UTC time as the service writes it (msgspec: `Z`)."""
    head = stamp[:19]
    base = _seconds.get(head)
    if base is None:
        base = _seconds[head] = datetime.fromisoformat(head + "+00:00").timestamp()
    return base + float(stamp[19:-1]) if stamp[19:20] == "." else base


@dataclass(frozen=True)
class ClientPlan:
    kind: str  # "sse" or "grpc"
    watchers: int
    timed: int
    base_url: str
    grpc_target: str
    streams_per_channel: int = 10


class Watcher:
    __slots__ = ("before", "closing", "connected", "count", "crc", "ended", "last", "last_received", "timed")

    def __init__(self, timed: bool) -> None:
        self.timed = timed
        self.connected = False
        self.before = 0  # changes received before the gate (the readiness barrier's)
        self.count = 0
        self.crc = 0
        self.last = (0, 0)
        self.last_received = 0.0
        self.ended: str | None = None  # why the stream ended before we closed it
        self.closing = False


class Tally:
    """What every watcher of the process received; one latency histogram for the timed ones."""

    def __init__(self) -> None:
        self.gate: tuple[int, int] | None = None
        self.latency = Histogram()
        self.out_of_order = 0

    def accept(self, watcher: Watcher, ids: list[bytes], stamps: list[str] | None, received: float) -> None:
        gate = self.gate
        if gate is None:
            watcher.before += len(ids)
            return
        start = 0
        if position(ids[0]) <= gate:  # the prefix up to the gate (the stream's order) is not counted
            while start < len(ids) and position(ids[start]) <= gate:
                start += 1
            watcher.before += start
            if start == len(ids):
                return
            ids = ids[start:]
        if position(ids[0]) <= watcher.last:
            self.out_of_order += 1
        watcher.count += len(ids)
        watcher.crc = zlib.crc32(b"\n".join(ids) + b"\n", watcher.crc)
        watcher.last = position(ids[-1])
        watcher.last_received = received
        if stamps is not None:
            add = self.latency.add
            for stamp in stamps[start:]:
                add(received - epoch(stamp))


class SseWatcher(asyncio.Protocol):
    """GET /orders/changes on one connection; counts each complete block of events as it comes."""

    def __init__(self, watcher: Watcher, tally: Tally, request: bytes) -> None:
        self.watcher = watcher
        self.tally = tally
        self.request = request
        self.buffer = bytearray()
        self.in_head = True
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one, not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self.in_head:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[9:12])
            if status != b"200":
                self.watcher.ended = f"http {status.decode(errors='replace')}"
                self.close()
                return
            del buffer[: end + 4]
            self.in_head = False
        cut = buffer.rfind(b"\n\n")  # chunk framing lies between events: only whole events before it
        if cut < 0:
            return
        block = bytes(buffer[: cut + 2])
        del buffer[: cut + 2]
        watcher = self.watcher
        watcher.connected = True  # the first block is the opening comment
        ids = _ID.findall(block)
        if ids:
            stamps = [s.decode() for s in _STAMP.findall(block)] if watcher.timed else None
            self.tally.accept(watcher, ids, stamps, time.time())
        if b"event: error" in block:
            found = _ERROR.search(block)
            watcher.ended = "event: error " + (found.group(1).decode() if found else "?")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.watcher.closing and self.watcher.ended is None:
            self.watcher.ended = f"connection lost ({exc!r})" if exc else "closed by the server"

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _open_sse(plan: ClientPlan, watchers: list[Watcher], tally: Tally) -> list[SseWatcher]:
    loop = asyncio.get_running_loop()
    parts = urlsplit(plan.base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = f"GET /orders/changes HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
    opened: list[SseWatcher] = []

    async def one(watcher: Watcher) -> None:
        try:
            _, protocol = await loop.create_connection(lambda: SseWatcher(watcher, tally, request), host, port)
            opened.append(protocol)
        except OSError as exc:
            watcher.ended = f"connect {type(exc).__name__}"

    for first in range(0, len(watchers), OPEN_BATCH):
        await asyncio.gather(*(one(w) for w in watchers[first : first + OPEN_BATCH]))
    return opened


async def _grpc_watch(stub: Any, watcher: Watcher, tally: Tally) -> None:
    import grpc

    from service.grpc.pb import orders_pb2

    call = stub.WatchOrders(orders_pb2.WatchOrdersRequest())
    try:
        await call.initial_metadata()
        watcher.connected = True
        while True:
            change = await call.read()
            if change is grpc.aio.EOF:
                watcher.ended = "stream ended (OK)"
                return
            stamps = [change.order.updated_at] if watcher.timed else None
            tally.accept(watcher, [change.cursor.encode()], stamps, time.time())
    except grpc.aio.AioRpcError as exc:
        if not watcher.closing:
            watcher.ended = exc.code().name


def _open_grpc(plan: ClientPlan, watchers: list[Watcher], tally: Tally) -> tuple[list[Any], list[asyncio.Task[None]]]:
    import grpc

    from service.grpc.pb import orders_pb2_grpc

    channels: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    for first in range(0, len(watchers), plan.streams_per_channel):
        # a local subchannel pool: one TCP connection per channel, not one shared by all of them
        channel = grpc.aio.insecure_channel(plan.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)])
        channels.append(channel)
        stub = orders_pb2_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]
        for watcher in watchers[first : first + plan.streams_per_channel]:
            tasks.append(asyncio.create_task(_grpc_watch(stub, watcher, tally)))
    return channels, tasks


def _status(watchers: list[Watcher]) -> dict[str, int]:
    return {
        "connected": sum(w.connected for w in watchers),
        "ended": sum(w.ended is not None for w in watchers),
        "before": sum(w.before > 0 for w in watchers),
    }


def _report(plan: ClientPlan, watchers: list[Watcher], tally: Tally, count: int, crc: int) -> dict[str, Any]:
    return {
        "kind": plan.kind,
        "watchers": len(watchers),
        "exact": sum(w.count == count and w.crc == crc for w in watchers),
        "received": sum(w.count for w in watchers),
        "missing": sum(max(0, count - w.count) for w in watchers),
        "extra": sum(max(0, w.count - count) for w in watchers),
        "same_count_other_sequence": sum(w.count == count and w.crc != crc for w in watchers),
        "out_of_order": tally.out_of_order,
        "ended": dict(Counter(w.ended for w in watchers if w.ended is not None)),
        "timed_watchers": sum(w.timed for w in watchers),
        "latency": tally.latency.sparse(),
        "last_received": max((w.last_received for w in watchers), default=0.0),
    }


async def _serve(plan: ClientPlan, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    tally = Tally()
    watchers = [Watcher(timed=index < plan.timed) for index in range(plan.watchers)]
    sse: list[SseWatcher] = []
    channels: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    if plan.kind == "sse":
        sse = await _open_sse(plan, watchers, tally)
    else:
        channels, tasks = _open_grpc(plan, watchers, tally)
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command[0] == "status":
            pipe.send(_status(watchers))
        elif command[0] == "go":
            tally.gate = position(command[1].encode())
            pipe.send("ok")
        elif command[0] == "end":
            _, last, count, crc, timeout = command
            target = position(last.encode())
            deadline = loop.time() + timeout
            while loop.time() < deadline and any(w.ended is None and w.last < target for w in watchers):
                await asyncio.sleep(0.05)
            for watcher in watchers:
                watcher.closing = True
            report = _report(plan, watchers, tally, count, crc)
            for protocol in sse:
                protocol.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for channel in channels:
                await channel.close()
            pipe.send(report)
            return


def client_process(plan: ClientPlan, pipe: Connection) -> None:
    """A multiprocessing target: open the watchers, then follow the parent's commands."""
    import uvloop

    uvloop.run(_serve(plan, pipe))
