"""The gRPC API over a real channel: every RPC, every status code, health, reflection, shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import grpc
import httpx
import psqlpy
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from benchmarks.database import fetch_rows
from service.grpc.pb import orders_pb2, orders_pb2_grpc
from tests.conftest import IsolatedSchema, free_port
from tests.e2e.conftest import ServiceProcess, isolated_service, ready_channel

if TYPE_CHECKING:
    from tests.conftest import TestServices

pytestmark = pytest.mark.e2e

PENDING = orders_pb2.ORDER_STATUS_PENDING
CONFIRMED = orders_pb2.ORDER_STATUS_CONFIRMED
CANCELLED = orders_pb2.ORDER_STATUS_CANCELLED
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def grpc_service(test_services: TestServices) -> Iterator[tuple[ServiceProcess, IsolatedSchema]]:
    """One service (http + grpc roles) shared by the module, in its own schema."""
    with isolated_service(test_services, "http,grpc", wait_for_grpc=True) as started:
        yield started


@pytest.fixture
async def channel(grpc_service: tuple[ServiceProcess, IsolatedSchema]) -> AsyncIterator[grpc.aio.Channel]:
    async with ready_channel(grpc_service[0].grpc_target) as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> orders_pb2_grpc.OrderServiceStub:
    return orders_pb2_grpc.OrderServiceStub(channel)


async def _create(stub: orders_pb2_grpc.OrderServiceStub, product: str = "book", quantity: int = 1) -> orders_pb2.Order:
    return (await stub.CreateOrder(orders_pb2.CreateOrderRequest(product=product, quantity=quantity))).order


async def _error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


def _violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None and status.code == code_pb2.INVALID_ARGUMENT
    found: dict[str, str] = {}
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request)
        found.update({v.field: v.description for v in bad_request.field_violations})
    assert found, "INVALID_ARGUMENT without BadRequest field violations"
    return found


async def test_every_rpc_succeeds(stub: orders_pb2_grpc.OrderServiceStub) -> None:
    call = stub.CreateOrder(
        orders_pb2.CreateOrderRequest(product="book", quantity=2), metadata=(("x-request-id", "grpc-req-1"),)
    )
    created = (await call).order
    assert dict(await call.initial_metadata())["x-request-id"] == "grpc-req-1"
    assert (created.product, created.quantity, created.status, created.version) == ("book", 2, PENDING, 1)
    assert created.created_at == created.updated_at and created.created_at.endswith("Z")
    uuid.UUID(created.id)

    got = (await stub.GetOrder(orders_pb2.GetOrderRequest(id=created.id))).order
    assert got == created

    # product "" / quantity 0 / status UNSPECIFIED / expected_version 0 leave things unchanged
    unchanged = (await stub.UpdateOrder(orders_pb2.UpdateOrderRequest(id=created.id))).order
    assert unchanged == created
    renamed = (
        await stub.UpdateOrder(orders_pb2.UpdateOrderRequest(id=created.id, product="novel", expected_version=1))
    ).order
    assert (renamed.product, renamed.quantity, renamed.status, renamed.version) == ("novel", 2, PENDING, 2)
    confirmed = (
        await stub.UpdateOrder(orders_pb2.UpdateOrderRequest(id=created.id, quantity=5, status=CONFIRMED))
    ).order
    assert (confirmed.product, confirmed.quantity, confirmed.status, confirmed.version) == ("novel", 5, CONFIRMED, 3)
    assert confirmed.created_at == created.created_at and confirmed.updated_at > created.updated_at

    listed = await stub.ListOrders(orders_pb2.ListOrdersRequest(status=CONFIRMED))
    assert confirmed in listed.orders and all(o.status == CONFIRMED for o in listed.orders)

    assert await stub.DeleteOrder(orders_pb2.DeleteOrderRequest(id=created.id, expected_version=3)) == (
        orders_pb2.DeleteOrderResponse()
    )
    err = await _error(stub.GetOrder(orders_pb2.GetOrderRequest(id=created.id)))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_request_id_is_generated_when_missing_or_invalid(stub: orders_pb2_grpc.OrderServiceStub) -> None:
    order = await _create(stub)
    for metadata in [(), (("x-request-id", "has space"),), (("x-request-id", "x" * 129),)]:
        call = stub.GetOrder(orders_pb2.GetOrderRequest(id=order.id), metadata=metadata)
        await call
        generated = dict(await call.initial_metadata())["x-request-id"]
        uuid.UUID(generated)
    # errors carry it too
    call = stub.GetOrder(orders_pb2.GetOrderRequest(id="nope"), metadata=(("x-request-id", "err-req-1"),))
    err = await _error(call)
    assert dict(err.initial_metadata())["x-request-id"] == "err-req-1"


async def test_not_found_for_malformed_and_unknown_ids(stub: orders_pb2_grpc.OrderServiceStub) -> None:
    unknown = str(uuid.uuid4())
    for bad_id in ["", "nope", unknown.upper() + "0", unknown]:
        for call in [
            stub.GetOrder(orders_pb2.GetOrderRequest(id=bad_id)),
            stub.UpdateOrder(orders_pb2.UpdateOrderRequest(id=bad_id, quantity=2)),
            stub.DeleteOrder(orders_pb2.DeleteOrderRequest(id=bad_id)),
        ]:
            err = await _error(call)
            assert err.code() == grpc.StatusCode.NOT_FOUND, (bad_id, err)
            assert "not found" in (err.details() or "")


async def test_invalid_argument_carries_bad_request_details(stub: orders_pb2_grpc.OrderServiceStub) -> None:
    err = await _error(stub.CreateOrder(orders_pb2.CreateOrderRequest(product=" ", quantity=0)))
    assert _violations(err) == {"product": "must not be blank", "quantity": "must be between 1 and 1000000"}
    assert err.details() == "product: must not be blank; quantity: must be between 1 and 1000000"  # as REST

    for quantity in [-1, 1_000_001, 2**62, -(2**63)]:
        err = await _error(stub.CreateOrder(orders_pb2.CreateOrderRequest(product="x", quantity=quantity)))
        assert "quantity" in _violations(err)
    err = await _error(stub.CreateOrder(orders_pb2.CreateOrderRequest(product="x" * 256, quantity=1)))
    assert _violations(err) == {"product": "must be at most 255 characters"}

    for page_size in [-1, 1001, 2**31 - 1]:
        err = await _error(stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=page_size)))
        assert _violations(err) == {"page_size": "must be between 1 and 1000"}
    err = await _error(stub.ListOrders(orders_pb2.ListOrdersRequest(page_token="forged")))
    assert _violations(err) == {"page_token": "is not a valid page cursor"}
    err = await _error(stub.ListOrders(orders_pb2.ListOrdersRequest(status=99)))  # type: ignore[arg-type]
    assert set(_violations(err)) == {"status"}

    order = await _create(stub)
    for request in [
        orders_pb2.UpdateOrderRequest(id=order.id, quantity=-5),
        orders_pb2.UpdateOrderRequest(id=order.id, status=42),  # type: ignore[arg-type]
        orders_pb2.UpdateOrderRequest(id=order.id, expected_version=-1),
    ]:
        assert _violations(await _error(stub.UpdateOrder(request)))
    err = await _error(stub.DeleteOrder(orders_pb2.DeleteOrderRequest(id=order.id, expected_version=-1)))
    assert set(_violations(err)) == {"expected_version"}

    err = await _error(
        stub.CreateOrder(
            orders_pb2.CreateOrderRequest(product="x", quantity=1), metadata=(("x-idempotency-key", "a b"),)
        )
    )
    assert set(_violations(err)) == {"x-idempotency-key"}


async def test_illegal_transition_is_failed_precondition(stub: orders_pb2_grpc.OrderServiceStub) -> None:
    order = await _create(stub)
    await stub.UpdateOrder(orders_pb2.UpdateOrderRequest(id=order.id, status=CANCELLED))
    for target, name in [(PENDING, "pending"), (CONFIRMED, "confirmed")]:
        err = await _error(stub.UpdateOrder(orders_pb2.UpdateOrderRequest(id=order.id, status=target)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details() == f"status cannot change from cancelled to {name}"


async def test_stale_expected_version_is_aborted(stub: orders_pb2_grpc.OrderServiceStub) -> None:
    order = await _create(stub)
    await stub.UpdateOrder(orders_pb2.UpdateOrderRequest(id=order.id, quantity=3))
    err = await _error(stub.UpdateOrder(orders_pb2.UpdateOrderRequest(id=order.id, quantity=4, expected_version=1)))
    assert err.code() == grpc.StatusCode.ABORTED
    assert err.details() == "order is at version 2, not the expected 1"
    err = await _error(stub.DeleteOrder(orders_pb2.DeleteOrderRequest(id=order.id, expected_version=1)))
    assert err.code() == grpc.StatusCode.ABORTED
    assert (await stub.GetOrder(orders_pb2.GetOrderRequest(id=order.id))).order.quantity == 3


async def test_idempotency_key_replays_the_same_order(stub: orders_pb2_grpc.OrderServiceStub) -> None:
    key = (("x-idempotency-key", f"grpc-{uuid.uuid4()}"),)
    request = orders_pb2.CreateOrderRequest(product="ticket", quantity=2)
    first_call = stub.CreateOrder(request, metadata=key)
    first = (await first_call).order
    assert "idempotent-replayed" not in dict(await first_call.trailing_metadata())
    again_call = stub.CreateOrder(request, metadata=key)
    assert (await again_call).order == first
    assert dict(await again_call.trailing_metadata())["idempotent-replayed"] == "true"
    err = await _error(stub.CreateOrder(orders_pb2.CreateOrderRequest(product="ticket", quantity=3), metadata=key))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_idempotency_keys_are_shared_with_rest_and_hold_under_concurrency(
    stub: orders_pb2_grpc.OrderServiceStub, grpc_service: tuple[ServiceProcess, IsolatedSchema]
) -> None:
    service, schema = grpc_service
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        # a key first used over REST replays over gRPC, and the other way round
        rest_key = f"cross-{uuid.uuid4()}"
        rest = await client.post("/orders", json={"product": "x", "quantity": 5}, headers={"idempotency-key": rest_key})
        assert rest.status_code == 201
        replay_call = stub.CreateOrder(
            orders_pb2.CreateOrderRequest(product="x", quantity=5), metadata=(("x-idempotency-key", rest_key),)
        )
        assert (await replay_call).order.id == rest.json()["id"]
        assert dict(await replay_call.trailing_metadata())["idempotent-replayed"] == "true"
        grpc_key = f"cross-{uuid.uuid4()}"
        created = (
            await stub.CreateOrder(
                orders_pb2.CreateOrderRequest(product="y", quantity=6), metadata=(("x-idempotency-key", grpc_key),)
            )
        ).order
        again = await client.post(
            "/orders", json={"product": "y", "quantity": 6}, headers={"idempotency-key": grpc_key}
        )
        assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == created.id
        mismatch = await client.post(
            "/orders", json={"product": "y", "quantity": 7}, headers={"idempotency-key": grpc_key}
        )
        assert mismatch.status_code == 422

    # malformed keys are INVALID_ARGUMENT; a failed create stores no key
    for bad in ["x" * 256, "has space"]:
        err = await _error(
            stub.CreateOrder(
                orders_pb2.CreateOrderRequest(product="z", quantity=1), metadata=(("x-idempotency-key", bad),)
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    retry = (("x-idempotency-key", f"retry-{uuid.uuid4()}"),)
    err = await _error(stub.CreateOrder(orders_pb2.CreateOrderRequest(product="", quantity=1), metadata=retry))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    fixed_call = stub.CreateOrder(orders_pb2.CreateOrderRequest(product="fixed", quantity=1), metadata=retry)
    assert (await fixed_call).order.product == "fixed"
    assert "idempotent-replayed" not in dict(await fixed_call.trailing_metadata())

    # 50 identical calls at once: one order, one event, every reply names it
    burst_key = f"burst-{uuid.uuid4()}"

    replies = await asyncio.gather(
        *(
            stub.CreateOrder(
                orders_pb2.CreateOrderRequest(product="burst", quantity=1), metadata=(("x-idempotency-key", burst_key),)
            )
            for _ in range(50)
        )
    )
    assert len({reply.order.id for reply in replies}) == 1
    order_id = replies[0].order.id
    keys = await fetch_rows(schema.dsn, "SELECT count(*) FROM idempotency_keys WHERE key = $1", [burst_key])
    events = await fetch_rows(schema.dsn, "SELECT count(*) FROM outbox WHERE order_id = $1::text::uuid", [order_id])
    assert (keys, events) == ([(1,)], [(1,)])


async def test_paging_matches_rest_cursors(
    stub: orders_pb2_grpc.OrderServiceStub, grpc_service: tuple[ServiceProcess, IsolatedSchema]
) -> None:
    mine = [(await _create(stub, product=f"page-{i}")).id for i in range(5)]
    seen: list[orders_pb2.Order] = []
    token = ""
    pages = 0
    while True:
        page = await stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=2, page_token=token))
        assert len(page.orders) <= 2
        seen.extend(page.orders)
        pages += 1
        token = page.next_page_token
        if not token:
            break
        assert len(page.orders) == 2
    ids = [o.id for o in seen]
    assert pages >= 3 and len(ids) == len(set(ids))
    assert ids[:5] == mine[::-1]  # newest first
    assert ids == sorted(ids, reverse=True)  # UUIDv7: time order

    # page_size 0 means the default (100); the token is the same cursor REST's Link header carries
    default_page = await stub.ListOrders(orders_pb2.ListOrdersRequest())
    assert [o.id for o in default_page.orders] == ids[:100]
    first = await stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=2))
    async with httpx.AsyncClient(base_url=grpc_service[0].base_url) as client:
        response = await client.get("/orders", params={"limit": 2})
        rest_cursor = httpx.URL(response.links["next"]["url"]).params["cursor"]
        assert rest_cursor == first.next_page_token
        rest_next = await client.get("/orders", params={"limit": 2, "cursor": first.next_page_token})
    grpc_next = await stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=2, page_token=rest_cursor))
    assert [o["id"] for o in rest_next.json()] == [o.id for o in grpc_next.orders]

    # status filter with paging
    cancelled = []
    for order_id in mine[:3]:
        cancelled.append(order_id)
        await stub.UpdateOrder(orders_pb2.UpdateOrderRequest(id=order_id, status=CANCELLED))
    filtered: list[str] = []
    token = ""
    while True:
        page = await stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=1, page_token=token, status=CANCELLED))
        assert all(o.status == CANCELLED for o in page.orders)
        filtered.extend(o.id for o in page.orders)
        token = page.next_page_token
        if not token:
            break
    assert set(cancelled) <= set(filtered)


async def test_rest_and_grpc_see_the_same_orders(
    stub: orders_pb2_grpc.OrderServiceStub, grpc_service: tuple[ServiceProcess, IsolatedSchema]
) -> None:
    async with httpx.AsyncClient(base_url=grpc_service[0].base_url) as client:
        rest = (await client.post("/orders", json={"product": "from-rest", "quantity": 3})).json()
        via_grpc = (await stub.GetOrder(orders_pb2.GetOrderRequest(id=rest["id"]))).order
        assert (via_grpc.product, via_grpc.quantity, via_grpc.status, via_grpc.version) == ("from-rest", 3, PENDING, 1)
        assert (via_grpc.created_at, via_grpc.updated_at) == (rest["created_at"], rest["updated_at"])

        created = await _create(stub, product="from-grpc", quantity=4)
        updated = (await stub.UpdateOrder(orders_pb2.UpdateOrderRequest(id=created.id, status=CONFIRMED))).order
        seen = (await client.get(f"/orders/{created.id}")).json()
        assert seen == {
            "id": created.id,
            "product": "from-grpc",
            "quantity": 4,
            "status": "confirmed",
            "version": 2,
            "created_at": updated.created_at,
            "updated_at": updated.updated_at,
        }
        await stub.DeleteOrder(orders_pb2.DeleteOrderRequest(id=created.id))
        assert (await client.get(f"/orders/{created.id}")).status_code == 404


async def test_health_and_reflection(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ["", "orders.OrderService"]:
        deadline = time.monotonic() + 10
        while (await health.Check(health_pb2.HealthCheckRequest(service=name))).status != SERVING:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    err = await _error(health.Check(health_pb2.HealthCheckRequest(service="nope.Nothing")))
    assert err.code() == grpc.StatusCode.NOT_FOUND

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = [
        r
        async for r in reflection.ServerReflectionInfo(
            iter(
                [
                    reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="orders.OrderService"),
                ]
            )
        )
    ]
    names = {s.name for s in responses[0].list_services_response.service}
    assert names == {"orders.OrderService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    assert responses[1].file_descriptor_response.file_descriptor_proto


async def test_access_log_line_per_call(
    stub: orders_pb2_grpc.OrderServiceStub, grpc_service: tuple[ServiceProcess, IsolatedSchema]
) -> None:
    request_id = f"log-{uuid.uuid4()}"
    await _error(stub.GetOrder(orders_pb2.GetOrderRequest(id="nope"), metadata=(("x-request-id", request_id),)))
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(x) for x in grpc_service[0].logs().splitlines() if request_id in x]
        if lines or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["logger"] == "orders.access" and line["role"] == "grpc"
    assert (line["request_id"], line["method"], line["code"]) == (request_id, "GetOrder", "NOT_FOUND")
    assert isinstance(line["duration_ms"], float)


async def test_unavailable_when_the_database_is_down(start_service) -> None:  # type: ignore[no-untyped-def]
    closed = free_port()
    service = start_service(
        roles="http,grpc",
        wait_for_grpc=True,
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed}/nothing",
        MIGRATE_ON_START="false",
    )
    async with httpx.AsyncClient(base_url=service.base_url) as client:
        assert (await client.get("/health")).status_code == 200
    async with grpc.aio.insecure_channel(service.grpc_target) as chan:
        stub = orders_pb2_grpc.OrderServiceStub(chan)
        err = await _error(stub.GetOrder(orders_pb2.GetOrderRequest(id=str(uuid.uuid4())), timeout=10))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "database" in (err.details() or "") and str(closed) not in (err.details() or "")
        err = await _error(stub.CreateOrder(orders_pb2.CreateOrderRequest(product="x", quantity=1), timeout=10))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        health = health_pb2_grpc.HealthStub(chan)
        for name in ["", "orders.OrderService"]:
            assert (await health.Check(health_pb2.HealthCheckRequest(service=name))).status == NOT_SERVING


async def test_sigterm_health_goes_not_serving_and_in_flight_call_finishes(
    start_service,  # type: ignore[no-untyped-def]
    service_schema: IsolatedSchema,
) -> None:
    service = start_service(roles="http,grpc", wait_for_grpc=True)
    async with grpc.aio.insecure_channel(service.grpc_target) as chan:
        stub = orders_pb2_grpc.OrderServiceStub(chan)
        order = await _create(stub, product="slow")
        watch = health_pb2_grpc.HealthStub(chan).Watch(health_pb2.HealthCheckRequest(service="orders.OrderService"))
        while (await asyncio.wait_for(watch.read(), 10)).status != SERVING:
            pass

        # Hold the order's row lock so the UpdateOrder below stays in flight until we let go.
        pool = psqlpy.ConnectionPool(dsn=service_schema.dsn, max_db_pool_size=2)
        conn = await pool.connection()
        tx = conn.transaction()
        await tx.begin()
        await tx.execute("SELECT id FROM orders WHERE id = $1 FOR UPDATE", [uuid.UUID(order.id)])
        update = asyncio.ensure_future(
            stub.UpdateOrder(orders_pb2.UpdateOrderRequest(id=order.id, quantity=7), timeout=30)
        )
        try:
            await asyncio.sleep(0.5)
            assert not update.done()
            service.signal(signal.SIGTERM)
            assert (await asyncio.wait_for(watch.read(), 10)).status == NOT_SERVING
            assert await asyncio.wait_for(watch.read(), 10) is grpc.aio.EOF  # the stream ends: no drain hold-up
            assert await watch.code() == grpc.StatusCode.OK
            assert not update.done()
        finally:
            await tx.rollback()
            conn.close()
            pool.close()
        updated = (await asyncio.wait_for(update, 15)).order
        assert (updated.quantity, updated.version) == (7, 2)
    assert await asyncio.to_thread(service.wait, 20) == 0
    logs = service.logs()
    assert "gRPC shutting down" in logs and "gRPC stopped" in logs


def test_unbindable_port_exits_non_zero_with_a_clear_line(test_services: TestServices) -> None:
    with socket.socket() as holder:  # a plain listener (no SO_REUSEPORT) that gRPC cannot share
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {
            **os.environ,
            "GRPC_PORT": str(port),
            "BIND": "127.0.0.1",
            "DATABASE_URL": test_services.database_url,
            "REDIS_URL": test_services.redis_url,
            "MIGRATE_ON_START": "false",
        }
        result = subprocess.run(
            [sys.executable, "-m", "service", "role", "grpc"], env=env, capture_output=True, timeout=30
        )
    assert result.returncode != 0
    lines = [json.loads(x) for x in result.stdout.decode().splitlines() if x.startswith("{")]
    errors = [x for x in lines if x["level"] == "ERROR"]
    assert errors and errors[0]["message"].startswith("cannot bind the gRPC port")
    assert errors[0]["address"] == f"127.0.0.1:{port}"
