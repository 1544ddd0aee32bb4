"""gRPC over a raw channel: bytes that are no valid request, wrong wire types, oversize messages.

Each call uses `unary_unary` with no serializers, so the bytes reach the server exactly as
written. Every hostile call must end with a deliberate status (never UNKNOWN, INTERNAL or
UNAVAILABLE), and a normal call afterwards must still succeed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import grpc
import pytest

from service.grpc.pb import orders_pb2
from service.grpc.server import MAX_RECEIVE_BYTES as MAX_MESSAGE_BYTES
from tests.e2e.conftest import ServiceProcess, ready_channel

pytestmark = [pytest.mark.e2e, pytest.mark.hostile]

StatusCode = grpc.StatusCode
SERVICE = "/orders.OrderService/"
METHODS = ["CreateOrder", "GetOrder", "ListOrders", "UpdateOrder", "DeleteOrder"]
# What a server may answer to a request it cannot use; anything else is a crash or a hang.
DELIBERATE = {StatusCode.OK, StatusCode.INVALID_ARGUMENT, StatusCode.NOT_FOUND, StatusCode.FAILED_PRECONDITION}


@pytest.fixture
async def channel(hostile_service: ServiceProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with ready_channel(hostile_service.grpc_target) as chan:
        yield chan


async def raw_call(channel: grpc.aio.Channel, method: str, payload: bytes) -> tuple[StatusCode, str, bytes]:
    call = channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
    try:
        reply = await call(payload, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", b""
    return StatusCode.OK, "", reply


async def assert_still_serving(channel: grpc.aio.Channel) -> None:
    request = orders_pb2.CreateOrderRequest(product="after hostile input", quantity=1).SerializeToString()
    code, details, reply = await raw_call(channel, "CreateOrder", request)
    assert code == StatusCode.OK, details
    order = orders_pb2.CreateOrderResponse.FromString(reply).order
    code, details, reply = await raw_call(
        channel, "GetOrder", orders_pb2.GetOrderRequest(id=order.id).SerializeToString()
    )
    assert code == StatusCode.OK, details
    assert orders_pb2.GetOrderResponse.FromString(reply).order.product == "after hostile input"


MALFORMED = {
    "garbage": b"\xff\xff\xff\xff",
    "truncated varint": b"\x10\xff",
    "length past the end": b"\x0a\x7fab",
    "invalid UTF-8 in a string": b"\x0a\x02\xc3\x28\x12\x02\xc3\x28",  # fields 1 and 2 (ListOrders' string is 2)
    "field number 0": b"\x00\x01",
    "end group without start": b"\x0c",
    "wire type 6": b"\x0e\x01",
    "64-bit field cut short": b"\x09\x01\x02",
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_protobuf_is_invalid_argument(channel: grpc.aio.Channel, method: str, payload: bytes) -> None:
    """Regression: grpc's own parsing answered UNKNOWN with the parser's exception in the details."""
    code, details, _ = await raw_call(channel, method, payload)
    assert code == StatusCode.INVALID_ARGUMENT, (code, details)
    assert "is not a valid orders." in details and "class" not in details and "Error" not in details


async def test_server_keeps_serving_after_malformed_requests(channel: grpc.aio.Channel) -> None:
    for payload in MALFORMED.values():
        await raw_call(channel, "CreateOrder", payload)
    await assert_still_serving(channel)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"\x08\x05\x10\x01", "product"),  # product (string, field 1) sent as a varint
        (b"\x0a\x01a\x12\x01x", "quantity"),  # quantity (int64, field 2) sent length-delimited
        (b"\x0a\x01a\x15\x01\x00\x00\x00", "quantity"),  # quantity sent as a fixed32
    ],
)
async def test_wrong_wire_types_leave_the_field_unset_and_are_invalid_argument(
    channel: grpc.aio.Channel, payload: bytes, field: str
) -> None:
    """A field with the wrong wire type is kept as an unknown field; the request then lacks it."""
    code, details, _ = await raw_call(channel, "CreateOrder", payload)
    assert code == StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}:") or f"; {field}:" in details, details
    await assert_still_serving(channel)


async def test_wrong_wire_types_on_every_method_get_a_deliberate_status(channel: grpc.aio.Channel) -> None:
    # Every field of every request, as each wire type it is not.
    for method in METHODS:
        for field in range(1, 6):
            for wire, value in ((0, b"\x05"), (1, b"\x00" * 8), (2, b"\x01x"), (5, b"\x00" * 4)):
                code, details, _ = await raw_call(channel, method, bytes([field << 3 | wire]) + value)
                assert code in DELIBERATE, (method, field, wire, code, details)
    await assert_still_serving(channel)


async def test_null_character_in_a_string_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    """Regression: a product with U+0000 reached PostgreSQL (which cannot store it) and failed there."""
    payload = orders_pb2.CreateOrderRequest(product="a\x00b", quantity=1).SerializeToString()
    code, details, _ = await raw_call(channel, "CreateOrder", payload)
    assert code == StatusCode.INVALID_ARGUMENT
    assert details == "product: must not contain NUL characters"


@pytest.mark.parametrize("method", ["CreateOrder", "UpdateOrder"])
async def test_oversize_message_is_resource_exhausted(channel: grpc.aio.Channel, method: str) -> None:
    product = "x" * (MAX_MESSAGE_BYTES + 1024)
    payload = orders_pb2.CreateOrderRequest(product=product, quantity=1).SerializeToString()
    code, details, _ = await raw_call(channel, method, payload)
    assert code == StatusCode.RESOURCE_EXHAUSTED, details
    await assert_still_serving(channel)


async def test_just_under_the_limit_is_read_and_refused_by_the_rules(channel: grpc.aio.Channel) -> None:
    payload = orders_pb2.CreateOrderRequest(product="x" * (MAX_MESSAGE_BYTES - 64), quantity=1).SerializeToString()
    code, details, _ = await raw_call(channel, "CreateOrder", payload)
    assert code == StatusCode.INVALID_ARGUMENT
    assert details == "product: must be at most 255 characters"


async def test_the_largest_valid_request_fits_the_limit_with_room(channel: grpc.aio.Channel) -> None:
    """The receive limit is a small multiple of the largest valid request, not gRPC's 4 MiB."""
    largest = orders_pb2.UpdateOrderRequest(
        id="01a23aad-4a32-73b6-94fe-35ee1044148c",
        product="\U0001f4da" * 255,
        quantity=1_000_000,
        status=3,
        expected_version=2**62,
    ).SerializeToString()
    assert 2 * len(largest) <= MAX_MESSAGE_BYTES <= 8 * len(largest)
    code, details, _ = await raw_call(channel, "UpdateOrder", largest)
    assert code == StatusCode.NOT_FOUND, details  # read and handled: no such order


async def test_unknown_method_is_unimplemented(channel: grpc.aio.Channel) -> None:
    code, _, _ = await raw_call(channel, "DropAllOrders", b"")
    assert code == StatusCode.UNIMPLEMENTED
    await assert_still_serving(channel)


def mutations(seed: int, count: int) -> list[tuple[str, bytes]]:
    """Random bytes and bit-flipped, truncated or spliced valid requests of every method."""
    rng = random.Random(seed)
    valid = {
        "CreateOrder": orders_pb2.CreateOrderRequest(product="book", quantity=3),
        "GetOrder": orders_pb2.GetOrderRequest(id="01a23aad-4a32-73b6-94fe-35ee1044148c"),
        "ListOrders": orders_pb2.ListOrdersRequest(page_size=5, page_token="abc", status=1),
        "UpdateOrder": orders_pb2.UpdateOrderRequest(
            id="01a23aad-4a32-73b6-94fe-35ee1044148c", product="b", quantity=2, status=2, expected_version=1
        ),
        "DeleteOrder": orders_pb2.DeleteOrderRequest(id="01a23aad-4a32-73b6-94fe-35ee1044148c", expected_version=3),
    }
    cases: list[tuple[str, bytes]] = []
    for _ in range(count):
        method = rng.choice(METHODS)
        data = bytearray(valid[method].SerializeToString())
        kind = rng.randrange(4)
        if kind == 0:
            data = bytearray(rng.randbytes(rng.randrange(1, 64)))
        elif kind == 1:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 2:
            data = data[: rng.randrange(len(data))]
        else:
            at = rng.randrange(len(data))
            data[at:at] = rng.randbytes(rng.randrange(1, 8))
        cases.append((method, bytes(data)))
    return cases


async def test_random_mutations_get_deliberate_statuses_while_others_are_served(channel: grpc.aio.Channel) -> None:
    codes: dict[StatusCode, int] = {}
    normal_calls = 0

    async def normal_traffic(stop: asyncio.Event) -> None:
        nonlocal normal_calls
        while not stop.is_set():
            await assert_still_serving(channel)
            normal_calls += 1

    stop = asyncio.Event()
    traffic = asyncio.create_task(normal_traffic(stop))
    try:
        for method, payload in mutations(seed=10, count=400):
            code, details, _ = await raw_call(channel, method, payload)
            assert code in DELIBERATE, (method, payload, code, details)
            codes[code] = codes.get(code, 0) + 1
    finally:
        stop.set()
        await asyncio.wait_for(traffic, 10)
    print("raw gRPC mutations:", {c.name: n for c, n in codes.items()}, "normal calls meanwhile:", normal_calls)
    assert normal_calls > 0
    await assert_still_serving(channel)


async def test_malformed_requests_to_health_and_reflection_are_invalid_argument(channel: grpc.aio.Channel) -> None:
    """Regression: the standard health and reflection servicers answered UNKNOWN as well."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check(b"\xff\xff", timeout=10)
    assert caught.value.code() == StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "the request is not a valid grpc.health.v1.HealthCheckRequest message"

    watch = channel.unary_stream("/grpc.health.v1.Health/Watch", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in watch(b"\xff\xff", timeout=10):
            pass
    assert caught.value.code() == StatusCode.INVALID_ARGUMENT

    info = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in info(iter([b"\xff\xff"]), timeout=10):
            pass
    assert caught.value.code() == StatusCode.INVALID_ARGUMENT

    healthy = await check(b"", timeout=10)  # an empty HealthCheckRequest: the server's overall health
    assert healthy == b"\x08\x01"  # status: SERVING
    await assert_still_serving(channel)
