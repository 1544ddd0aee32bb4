"""Watching orders live over real sockets: WatchOrders (gRPC) and GET /orders/changes (SSE).

From now, filtered, resumed exactly after a disconnect, 410/OUT_OF_RANGE for a cursor the stream
no longer holds, 400/INVALID_ARGUMENT for bad input, a slow watcher cut off, heartbeats, shutdown.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from service.grpc.pb import orders_pb2, orders_pb2_grpc
from tests.conftest import TestServices
from tests.e2e.conftest import ServiceProcess, isolated_service, ready_channel
from tests.watching import SseReader, grpc_watch, read_changes, sse_watch, stream_ids, stream_tip

pytestmark = pytest.mark.e2e

BUFFER = 64
ENV = {"WATCH_BUFFER": str(BUFFER), "WATCH_HEARTBEAT": "1", "SHUTDOWN_TIMEOUT": "5"}


@pytest.fixture(scope="module")
def watched(test_services: TestServices) -> Iterator[ServiceProcess]:
    """http + grpc + worker (the worker confirms each created order: one more change each)."""
    with isolated_service(test_services, "http,grpc,worker", ENV, wait_for_grpc=True, name="watch") as (proc, _):
        yield proc


@pytest.fixture
async def rest(watched: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=watched.base_url, timeout=15) as client:
        yield client


@pytest.fixture
async def stub(watched: ServiceProcess) -> AsyncIterator[orders_pb2_grpc.OrderServiceStub]:
    async with ready_channel(watched.grpc_target) as channel:
        yield orders_pb2_grpc.OrderServiceStub(channel)


async def _create(rest: httpx.AsyncClient, product: str = "book") -> str:
    reply = await rest.post("/orders", json={"product": product, "quantity": 1})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


async def _confirmed(rest: httpx.AsyncClient, order_id: str) -> None:
    for _ in range(200):
        if (await rest.get(f"/orders/{order_id}")).json()["status"] == "confirmed":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"order {order_id} never confirmed")


async def _settled_orders(watched: ServiceProcess, rest: httpx.AsyncClient, count: int) -> list[str]:
    """`count` new orders, confirmed, with every change of theirs already on the stream (a watch
    opened afterwards sees none of these)."""
    ids = [await _create(rest, f"o{i}") for i in range(count)]
    for order_id in ids:
        await _confirmed(rest, order_id)
    redis = aioredis.Redis.from_url(watched.env["REDIS_URL"])
    try:
        for _ in range(200):
            recent = await redis.xrevrange(watched.stream, count=500)
            confirmed = {
                json.loads(fields[b"payload"])["id"] for _, fields in recent if fields.get(b"event") == b"order.updated"
            }
            if confirmed.issuperset(ids):
                return ids
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
    raise AssertionError("the confirmations never reached the stream")


async def _update_in_turn(rest: httpx.AsyncClient, order_ids: tuple[str, ...]) -> None:
    """Quantities 2, 3, 4, each given to every order in turn: changes interleaved in a known order."""
    for quantity in (2, 3, 4):
        for order_id in order_ids:
            reply = await rest.put(f"/orders/{order_id}", json={"product": "x", "quantity": quantity})
            assert reply.status_code == 200


def _grpc_error(err: BaseException) -> tuple[grpc.StatusCode, str]:
    assert isinstance(err, grpc.aio.AioRpcError), err
    return err.code(), err.details() or ""


async def _read_until_error(call: Any) -> tuple[int, tuple[grpc.StatusCode, str]]:
    """Read a watch until it ends with an error (never cleanly): how many changes came, and the error."""
    received = 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while True:
            message = await asyncio.wait_for(call.read(), 15)
            assert message is not grpc.aio.EOF
            received += 1
    return received, _grpc_error(caught.value)


async def _until_live(call: Any, rest: httpx.AsyncClient) -> None:
    """No signal says when a gRPC watch from now is registered: create probes until one is seen."""
    for _ in range(50):
        await _create(rest, "probe")
        try:
            seen = await asyncio.wait_for(call.read(), 0.5)
        except TimeoutError:
            continue
        assert seen is not grpc.aio.EOF
        return
    raise AssertionError("the watch never saw a change")


# ---- gRPC -----------------------------------------------------------------------------------


async def test_grpc_watch_from_now_sees_each_change_of_every_order(
    rest: httpx.AsyncClient, stub: orders_pb2_grpc.OrderServiceStub
) -> None:
    call = grpc_watch(stub)
    try:
        await _until_live(call, rest)
        order_id = await _create(rest)
        await _confirmed(rest, order_id)
        assert (await rest.delete(f"/orders/{order_id}")).status_code == 204
        mine: list[orders_pb2.OrderChange] = []
        while len(mine) < 3:
            change = (await read_changes(call, 1))[0]
            if change.order.id == order_id:
                mine.append(change)
        assert [c.event for c in mine] == ["order.created", "order.updated", "order.deleted"]
        assert [c.order.version for c in mine] == [1, 2, 2]  # a delete carries the last state
        assert mine[1].order.status == orders_pb2.ORDER_STATUS_CONFIRMED
        assert all(c.event_id and c.occurred_at.endswith("Z") and c.cursor for c in mine)
    finally:
        call.cancel()


async def test_grpc_filter_resume_and_exact_order(
    watched: ServiceProcess, rest: httpx.AsyncClient, stub: orders_pb2_grpc.OrderServiceStub
) -> None:
    a, b, c = await _settled_orders(watched, rest, 3)
    tip = await stream_tip(watched.env["REDIS_URL"], watched.stream)
    call = grpc_watch(stub, order_ids=[a, b], after=tip)
    await _update_in_turn(rest, (c, a, b))
    first = await read_changes(call, 4)
    call.cancel()  # disconnect after four changes, resume after the fourth
    assert [(change.order.id, change.order.quantity) for change in first] == [(a, 2), (b, 2), (a, 3), (b, 3)]
    resumed = grpc_watch(stub, order_ids=[a, b], after=first[-1].cursor)
    try:
        rest_of = await read_changes(resumed, 2)  # c's last change came before these: it would show
        assert [(change.order.id, change.order.quantity) for change in rest_of] == [(a, 4), (b, 4)]
    finally:
        resumed.cancel()
    # Unfiltered, the resumed stream is exactly the stream's entries after the cursor, in order.
    everything = grpc_watch(stub, after=tip)
    try:
        expected = await stream_ids(watched.env["REDIS_URL"], watched.stream, tip)
        got = await read_changes(everything, len(expected))
        assert [c.cursor for c in got] == expected
    finally:
        everything.cancel()


@pytest.mark.parametrize(
    ("request_fields", "field", "words"),
    [
        ({"after": "yesterday"}, "after", "not a change cursor"),
        ({"after": "99999999999999-0"}, "after", "ahead of the change feed"),
        ({"order_ids": ["nope"]}, "order_ids", "not an order id"),
        ({"order_ids": [str(uuid.uuid4())]}, "order_ids", "not found"),
        ({"order_ids": [str(uuid.uuid4()) for _ in range(101)]}, "order_ids", "at most 100"),
    ],
)
async def test_grpc_bad_watch_requests_are_invalid_argument(
    stub: orders_pb2_grpc.OrderServiceStub, request_fields: dict[str, Any], field: str, words: str
) -> None:
    call = stub.WatchOrders(orders_pb2.WatchOrdersRequest(**request_fields))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    code, details = _grpc_error(caught.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in details and details.startswith(field.rstrip("s")), details


async def test_grpc_slow_watcher_is_cut_off_with_resource_exhausted(
    watched: ServiceProcess, rest: httpx.AsyncClient
) -> None:
    # Without BDP probing the client's HTTP/2 window stays small, so an unread stream backs up at
    # once (with it, grpc grows the window to megabytes: the server's writes back up later).
    options = [("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(watched.grpc_target, options=options) as channel:
        call = grpc_watch(orders_pb2_grpc.OrderServiceStub(channel))  # live: a resuming one reads at its pace
        await _until_live(call, rest)
        await _create_many(rest, 1500)  # 3000 changes: far more than the buffer plus the window
        received, (code, details) = await _read_until_error(call)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert f"more than {BUFFER} changes behind" in details
    assert received < 3000


async def _calls_ended(rest: httpx.AsyncClient, code: str) -> float:
    """How many WatchOrders calls ended with `code`, by the service's metrics."""
    families = text_string_to_metric_families((await rest.get("/metrics")).text)
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == "orders_grpc_calls_total" and sample.labels == {"method": "WatchOrders", "code": code}
    )


async def test_grpc_watcher_that_stops_reading_is_ended_with_resource_exhausted(
    watched: ServiceProcess, rest: httpx.AsyncClient
) -> None:
    # A client window of 1 KiB (and no BDP probing to grow it): a few unread changes fill it and
    # the server's next write waits for a window update that never comes.
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
    async with grpc.aio.insecure_channel(watched.grpc_target, options=options) as channel:
        call = grpc_watch(orders_pb2_grpc.OrderServiceStub(channel))
        await _until_live(call, rest)
        ended = await _calls_ended(rest, "RESOURCE_EXHAUSTED")
        await _create_many(rest, 20)  # 40 changes: fewer than WATCH_BUFFER, so only the stuck write can end it
        for _ in range(600):  # the server gives up on its own, while nobody reads
            if await _calls_ended(rest, "RESOURCE_EXHAUSTED") > ended:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the server never ended the watch of a client that stopped reading")
        received, (code, details) = await _read_until_error(call)  # what the window held, then the status
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "stopped reading" in details and "resume from its last cursor" in details
    assert received < 40


async def _create_many(rest: httpx.AsyncClient, count: int, concurrency: int = 32) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            queue.get_nowait()
            await _create(rest, "bulk")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# ---- REST (SSE) -----------------------------------------------------------------------------


async def test_sse_from_now_filter_and_resume_with_last_event_id(
    watched: ServiceProcess, rest: httpx.AsyncClient
) -> None:
    a, b, c = await _settled_orders(watched, rest, 3)
    async with sse_watch(rest, f"?order_id={a}&order_id={b}") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        events = SseReader(response.aiter_lines())
        await events.until_open()
        await _update_in_turn(rest, (c, a, b))
        first = [await events.next() for _ in range(4)]
    assert all(e is not None and e.event == "order.updated" for e in first)
    orders = [json.loads(e.data) for e in first if e is not None]
    assert [(o["id"], o["quantity"]) for o in orders] == [(a, 2), (b, 2), (a, 3), (b, 3)]
    assert orders[0] == {**orders[0], "product": "x", "status": "confirmed"}
    last_id = first[-1].id if first[-1] is not None else None
    assert last_id
    async with sse_watch(rest, f"?order_id={a}&order_id={b}", headers={"last-event-id": last_id}) as response:
        events = SseReader(response.aiter_lines())
        after = [await events.next() for _ in range(2)]  # c's last change came before these: it would show
    resumed = [json.loads(e.data) for e in after if e is not None]
    assert [(o["id"], o["quantity"]) for o in resumed] == [(a, 4), (b, 4)]
    # ?after= is the same as Last-Event-ID; every entry after the cursor, in stream order.
    expected = await stream_ids(watched.env["REDIS_URL"], watched.stream, last_id)
    async with sse_watch(rest, f"?after={last_id}") as response:
        events = SseReader(response.aiter_lines())
        got = [await events.next() for _ in expected]
    assert [e.id for e in got if e is not None] == expected


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("?after=yesterday", 400, "not a change cursor"),
        ("?after=99999999999999-0", 400, "ahead of the change feed"),
        ("?order_id=nope", 400, "not an order id"),
        (f"?order_id={uuid.uuid4()}", 400, "not found"),
        ("?" + "&".join(f"order_id={uuid.uuid4()}" for _ in range(101)), 400, "at most 100"),
    ],
)
async def test_sse_bad_requests_are_400(rest: httpx.AsyncClient, query: str, status: int, words: str) -> None:
    reply = await rest.get(f"/orders/changes{query}")
    assert reply.status_code == status
    assert reply.headers["content-type"] == "application/problem+json"
    assert words in reply.json()["detail"]


async def test_sse_sends_a_comment_while_idle(rest: httpx.AsyncClient) -> None:
    order_id = await _create(rest)
    await _confirmed(rest, order_id)
    await asyncio.sleep(1.0)  # the confirmation's own event reaches the stream just after it: then none comes
    async with sse_watch(rest, f"?order_id={order_id}") as response:
        events = SseReader(response.aiter_lines())
        await events.until_open()
        with pytest.raises(TimeoutError):
            await events.next(timeout=3.5)  # WATCH_HEARTBEAT=1: comments, no event
    assert events.comments.count("keep-alive") >= 2


async def test_sse_slow_watcher_gets_a_final_error_event(watched: ServiceProcess, rest: httpx.AsyncClient) -> None:
    # granian buffers a streamed response without backpressure: the stream is held back by the
    # client's TCP acknowledgements instead, so an unread one backs up into its watcher's buffer.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", watched.port))
    sock.sendall(b"GET /orders/changes HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(15)
    received = b""
    try:
        while b": watching" not in received:  # registered; from here on, nobody reads
            received += await asyncio.to_thread(sock.recv, 4096)
        await _create_many(rest, 1500)  # 3000 changes
        while True:
            chunk = await asyncio.to_thread(sock.recv, 65536)
            if not chunk:
                break
            received += chunk
            if b"event: error" in received and received.endswith(b"0\r\n\r\n"):
                break
        text = received.decode()
        assert "event: error" in text
        assert "watcher-too-slow" in text and f"more than {BUFFER} changes behind" in text
        assert text.rindex("event: error") > text.rindex("event: order."), "the error is the last event"
        # What the client's receive buffer took, at most BUFFER more unacknowledged and one batch (at
        # most BUFFER, its watcher's buffer): nowhere near the 3000 changes a server buffer would hold.
        assert text.count("event: order.") <= 3 * BUFFER
    finally:
        sock.close()


async def test_sse_watcher_that_reads_keeps_up_with_a_burst_beyond_its_buffer(
    watched: ServiceProcess, rest: httpx.AsyncClient
) -> None:
    # Held back by its client's acknowledgements, a stream must still keep up with one that reads.
    sock = socket.create_connection(("127.0.0.1", watched.port), timeout=15)
    sock.sendall(b"GET /orders/changes HTTP/1.1\r\nHost: x\r\n\r\n")
    received = bytearray()

    def read() -> None:  # in a thread: it reads on however busy the test's event loop is
        while chunk := sock.recv(65536):
            received.extend(chunk)

    reading = asyncio.ensure_future(asyncio.to_thread(read))
    try:
        for _ in range(500):
            if b": watching" in received:
                break
            await asyncio.sleep(0.01)
        count = 5 * BUFFER
        await _create_many(rest, count)
        for _ in range(300):
            if received.count(b"event: order.created") >= count or b"event: error" in received:
                break
            await asyncio.sleep(0.05)
        assert b"event: error" not in received, bytes(received[received.find(b"event: error") :])
        assert received.count(b"event: order.created") == count
    finally:
        sock.shutdown(socket.SHUT_RDWR)  # ends the reader's recv
        await reading
        sock.close()


async def test_a_cursor_the_stream_no_longer_holds_is_410_and_out_of_range(
    start_service: Any, test_services: TestServices
) -> None:
    proc: ServiceProcess = start_service("http,grpc,worker", wait_for_grpc=True, **ENV)
    async with httpx.AsyncClient(base_url=proc.base_url, timeout=15) as client:
        redis = aioredis.Redis.from_url(test_services.redis_url)
        try:
            await _confirmed(client, await _create(client))
            old = await stream_tip(test_services.redis_url, proc.stream)
            assert old != "0-0"
            await redis.xtrim(proc.stream, maxlen=0)  # everything, then newer entries
            await _confirmed(client, await _create(client))
            for _ in range(100):
                if await redis.xlen(proc.stream) == 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            await redis.aclose()
        gone = await client.get(f"/orders/changes?after={old}")
        assert gone.status_code == 410
        assert gone.json()["detail"].startswith(f"cursor {old} is older than the oldest change still held")
        gone = await client.get("/orders/changes", headers={"last-event-id": old})
        assert gone.status_code == 410
    async with grpc.aio.insecure_channel(proc.grpc_target) as channel:
        call = grpc_watch(orders_pb2_grpc.OrderServiceStub(channel), after=old)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert _grpc_error(caught.value)[0] == grpc.StatusCode.OUT_OF_RANGE


async def test_shutdown_ends_streams_cleanly_within_the_timeout(start_service: Any) -> None:
    proc: ServiceProcess = start_service("http,grpc,worker", wait_for_grpc=True, **ENV)
    async with (
        httpx.AsyncClient(base_url=proc.base_url, timeout=15) as client,
        grpc.aio.insecure_channel(proc.grpc_target) as channel,
    ):
        stub = orders_pb2_grpc.OrderServiceStub(channel)
        call = grpc_watch(stub, after="0-0")
        async with sse_watch(client, "?after=0-0") as response:
            events = SseReader(response.aiter_lines())
            await events.until_open()
            await _create(client)
            first = await events.next()
            assert first is not None and first.event == "order.created"
            assert (await read_changes(call, 1))[0].event == "order.created"
            stopping = time.monotonic()
            proc.signal(signal.SIGTERM)
            rest = []
            while (event := await events.next(timeout=10)) is not None:  # ends: no error, no hang
                rest.append(event)
        while (message := await asyncio.wait_for(call.read(), 10)) is not grpc.aio.EOF:
            assert message.event.startswith("order.")
        assert await call.code() == grpc.StatusCode.OK
    code = await asyncio.to_thread(proc.wait, 15)
    assert code == 0
    assert time.monotonic() - stopping < 5 + 5, "not within SHUTDOWN_TIMEOUT (5 s) and slack"
    assert all(e.event.startswith("order.") for e in rest)
