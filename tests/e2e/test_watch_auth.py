"""Who sees which changes, AUTH_MODE=jwt, over real sockets: a watcher with orders:read sees only
its own orders' changes (another owner's order id in its filter is refused as an unknown one), one
with orders:admin every owner's, and a token without orders:read is 403 / PERMISSION_DENIED."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest
import redis
import redis.asyncio as aioredis

from service.grpc.pb import orders_pb2, orders_pb2_grpc
from tests.auth_tokens import AUDIENCE, ISSUER, SigningKey, write_jwks
from tests.conftest import TestServices
from tests.e2e.conftest import ServiceProcess, isolated_service, ready_channel
from tests.watching import SseReader, read_changes, sse_watch, stream_tip

pytestmark = pytest.mark.e2e

KEY = SigningKey("k-watch", "ES256")
RW = "orders:read orders:write"
ADMIN = "orders:read orders:admin"


@pytest.fixture(scope="module")
def jwt_service(test_services: TestServices, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    jwks_file = write_jwks(tmp_path_factory.mktemp("jwks") / "jwks.json", KEY)
    env = {
        "AUTH_MODE": "jwt",
        "AUTH_ISSUER": ISSUER,
        "AUTH_AUDIENCE": AUDIENCE,
        "AUTH_JWKS_FILE": str(jwks_file),
        "WATCH_HEARTBEAT": "1",
    }
    with isolated_service(test_services, "http,grpc,worker", env, wait_for_grpc=True, name="watch-auth") as (proc, _):
        try:
            yield proc
        finally:
            proc.stop()
            redis.Redis.from_url(test_services.redis_url).delete(proc.stream, f"{proc.stream}.dlq")


@pytest.fixture
async def rest(jwt_service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=jwt_service.base_url, timeout=15) as client:
        yield client


@pytest.fixture
async def stub(jwt_service: ServiceProcess) -> AsyncIterator[orders_pb2_grpc.OrderServiceStub]:
    async with ready_channel(jwt_service.grpc_target) as channel:
        yield orders_pb2_grpc.OrderServiceStub(channel)


def token(owner: str, scope: str = RW) -> str:
    return KEY.token(owner, scope)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def owners() -> tuple[str, str]:
    """Two owners of this test's own (the service is shared by the module)."""
    suffix = uuid.uuid4().hex[:8]
    return f"alice-{suffix}", f"bob-{suffix}"


async def create(rest: httpx.AsyncClient, owner: str, product: str = "book") -> str:
    reply = await rest.post("/orders", json={"product": product, "quantity": 1}, headers=bearer(token(owner)))
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


async def on_stream(service: ServiceProcess, order_id: str, event: str) -> None:
    """Wait until the stream holds `event` of the order (so later changes come after it)."""
    client = aioredis.Redis.from_url(service.env["REDIS_URL"])
    try:
        for _ in range(200):
            for _, fields in await client.xrevrange(service.stream, count=200):
                if fields[b"event"] == event.encode() and json.loads(fields[b"payload"])["id"] == order_id:
                    return
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    raise AssertionError(f"{event} of {order_id} never reached the stream")


async def changes_of_two_owners(service: ServiceProcess, rest: httpx.AsyncClient, alice: str, bob: str) -> list[str]:
    """bob's order, alice's order, bob's order confirmed (on the stream), then alice's marker order:
    [bob's, alice's, marker]. A watcher reading up to the marker's creation has been offered
    every change of bob's order before it."""
    bobs = await create(rest, bob)
    alices = await create(rest, alice)
    await on_stream(service, bobs, "order.updated")  # the worker's confirmation
    return [bobs, alices, await create(rest, alice, "marker")]


async def sse_until(events: SseReader, marker: str) -> list[tuple[str, str]]:
    """(event, order id) of each change up to the creation of `marker`."""
    seen: list[tuple[str, str]] = []
    while (event := await events.next()) is not None:
        seen.append((event.event, json.loads(event.data)["id"]))
        if seen[-1] == ("order.created", marker):
            return seen
    raise AssertionError(f"the stream ended before {marker} was created: {seen}")


async def grpc_until(call: Any, marker: str) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    while seen[-1:] != [("order.created", marker)]:
        change = (await read_changes(call, 1))[0]
        seen.append((change.event, change.order.id))
    return seen


def grpc_watch(
    stub: orders_pb2_grpc.OrderServiceStub,
    owner: str,
    scope: str = RW,
    order_ids: tuple[str, ...] = (),
    after: str = "",
) -> Any:
    request = orders_pb2.WatchOrdersRequest(order_ids=list(order_ids), after=after)
    return stub.WatchOrders(request, metadata=(("authorization", f"Bearer {token(owner, scope)}"),))


async def grpc_refusal(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    return caught.value.code(), caught.value.details() or ""


# ---- what each watcher sees ---------------------------------------------------------------------


def assert_each_sees_its_own(
    alice_saw: list[tuple[str, str]], admin_saw: list[tuple[str, str]], alices: str, bobs: str, marker: str
) -> None:
    """Alice's watch showed her order and nothing of bob's; the admin's showed both owners' changes."""
    assert {order_id for _, order_id in alice_saw} <= {alices, marker}, "only alice's own orders"
    assert ("order.created", alices) in alice_saw
    assert {("order.created", bobs), ("order.updated", bobs), ("order.created", alices)} <= set(admin_saw)


async def test_sse_a_reader_sees_only_its_own_orders_an_admin_every_owners(
    jwt_service: ServiceProcess, rest: httpx.AsyncClient
) -> None:
    alice, bob = owners()
    async with (
        sse_watch(rest, headers=bearer(token(alice))) as mine,
        sse_watch(rest, headers=bearer(token("ops", ADMIN))) as everything,
    ):
        assert mine.status_code == everything.status_code == 200
        alice_events, admin_events = SseReader(mine.aiter_lines()), SseReader(everything.aiter_lines())
        await alice_events.until_open()
        await admin_events.until_open()
        bobs, alices, marker = await changes_of_two_owners(jwt_service, rest, alice, bob)
        alice_saw = await sse_until(alice_events, marker)
        admin_saw = await sse_until(admin_events, marker)
    assert_each_sees_its_own(alice_saw, admin_saw, alices, bobs, marker)


async def test_grpc_a_reader_sees_only_its_own_orders_an_admin_every_owners(
    jwt_service: ServiceProcess, rest: httpx.AsyncClient, stub: orders_pb2_grpc.OrderServiceStub
) -> None:
    alice, bob = owners()
    tip = await stream_tip(jwt_service.env["REDIS_URL"], jwt_service.stream)  # from here: no liveness probe needed
    mine, everything = grpc_watch(stub, alice, after=tip), grpc_watch(stub, "ops", ADMIN, after=tip)
    try:
        bobs, alices, marker = await changes_of_two_owners(jwt_service, rest, alice, bob)
        alice_saw = await grpc_until(mine, marker)
        admin_saw = await grpc_until(everything, marker)
    finally:
        mine.cancel()
        everything.cancel()
    assert_each_sees_its_own(alice_saw, admin_saw, alices, bobs, marker)


async def test_resuming_on_another_owners_order_shows_none_of_its_changes(
    jwt_service: ServiceProcess, rest: httpx.AsyncClient, stub: orders_pb2_grpc.OrderServiceStub
) -> None:
    # Resuming, ids in the filter are not looked up (a deleted order's deletion may be to come):
    # the owner rule alone must hide bob's changes.
    alice, bob = owners()
    tip = await stream_tip(jwt_service.env["REDIS_URL"], jwt_service.stream)
    bobs = await create(rest, bob)
    await on_stream(jwt_service, bobs, "order.updated")
    alices = await create(rest, alice)
    call = grpc_watch(stub, alice, order_ids=(bobs, alices), after=tip)
    try:
        first = (await read_changes(call, 1))[0]
    finally:
        call.cancel()
    assert (first.event, first.order.id) == ("order.created", alices)
    async with sse_watch(rest, f"?order_id={bobs}&order_id={alices}&after={tip}", headers=bearer(token(alice))) as r:
        event = await SseReader(r.aiter_lines()).next()
    assert event is not None and (event.event, json.loads(event.data)["id"]) == ("order.created", alices)


# ---- refusals -----------------------------------------------------------------------------------


async def test_another_owners_order_id_is_refused_exactly_like_an_unknown_one(
    rest: httpx.AsyncClient, stub: orders_pb2_grpc.OrderServiceStub
) -> None:
    alice, bob = owners()
    bobs, unknown = await create(rest, bob), str(uuid.uuid4())
    problems = []
    for order_id in (bobs, unknown):
        reply = await rest.get(f"/orders/changes?order_id={order_id}", headers=bearer(token(alice)))
        assert reply.status_code == 400
        problem = json.loads(reply.text.replace(order_id, "<id>"))
        problems.append({**problem, "request_id": None})
    assert problems[0] == problems[1]
    assert problems[0]["detail"].endswith("order <id> not found")
    statuses = []
    for order_id in (bobs, unknown):
        code, details = await grpc_refusal(grpc_watch(stub, alice, order_ids=(order_id,)))
        statuses.append((code, details.replace(order_id, "<id>")))
    assert statuses[0] == statuses[1]
    assert statuses[0][0] == grpc.StatusCode.INVALID_ARGUMENT and "not found" in statuses[0][1]
    # its owner, and an admin, may name it
    for owner, scope in ((bob, RW), ("ops", ADMIN)):
        async with sse_watch(rest, f"?order_id={bobs}", headers=bearer(token(owner, scope))) as reply:
            assert reply.status_code == 200
            await SseReader(reply.aiter_lines()).until_open()


async def test_a_token_without_orders_read_is_403_and_permission_denied(
    rest: httpx.AsyncClient, stub: orders_pb2_grpc.OrderServiceStub
) -> None:
    writer = token("writer", "orders:write")
    for query in ("", "?after=0-0", f"?order_id={uuid.uuid4()}"):
        reply = await rest.get(f"/orders/changes{query}", headers=bearer(writer))
        assert reply.status_code == 403, query
        assert reply.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="orders:read"'
        assert reply.json()["type"].endswith("/insufficient-scope")
    code, _ = await grpc_refusal(grpc_watch(stub, "writer", "orders:write"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
