"""Micro-benchmarks of every hot path of a request. `pytest benchmarks/ --codspeed` measures them;
plain `pytest` runs each once as a test."""

from __future__ import annotations

import logging
import uuid

import msgspec
import pytest

from benchmarks.conftest import LoopRunner
from service.cursor import CursorCodec
from service.domain import Order
from service.grpc.convert import order_to_pb, status_from_pb
from service.grpc.pb import orders_pb2
from service.http.api import HttpRequest, RestApi
from service.http.problems import decode_error
from service.http.schemas import CreateOrderBody, UpdateOrderBody
from service.observability.logging import format_record
from tests.unit.fakes import make_service

CREATE_BODY = b'{"product": "ergonomic keyboard", "quantity": 3}'
UPDATE_BODY = b'{"product": "ergonomic keyboard", "quantity": 4, "status": "confirmed"}'
decode_create = msgspec.json.Decoder(CreateOrderBody).decode
decode_update = msgspec.json.Decoder(UpdateOrderBody).decode
encode = msgspec.json.Encoder().encode


@pytest.fixture(scope="module")
def api_and_order(run_async: LoopRunner) -> tuple[RestApi, Order]:
    service, _, _ = make_service()
    api = RestApi(service, json_endpoints={}, openapi_document=b"{}", max_body_bytes=65536)
    order = run_async(service.create("bench", 1)).order
    for index in range(200):
        run_async(service.create(f"p{index}", 1))
    return api, order


@pytest.fixture(autouse=True, scope="module")
def quiet_access_log() -> None:
    logging.getLogger("orders.access").setLevel(logging.WARNING)


def test_decode_create_body(benchmark) -> None:  # type: ignore[no-untyped-def]
    result = benchmark(decode_create, CREATE_BODY)
    assert result.quantity == 3


def test_decode_invalid_body_to_problem(benchmark) -> None:  # type: ignore[no-untyped-def]
    def decode_bad() -> str:
        try:
            decode_create(b'{"product": 5, "quantity": 1}')
        except msgspec.DecodeError as exc:
            return decode_error(exc).detail
        raise AssertionError

    assert benchmark(decode_bad).startswith("product")


def test_decode_update_body(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(decode_update, UPDATE_BODY).status is not None


def test_encode_order(benchmark, api_and_order) -> None:  # type: ignore[no-untyped-def]
    _, order = api_and_order
    assert benchmark(encode, order).startswith(b'{"id"')


def test_encode_page_of_100(benchmark, api_and_order, run_async) -> None:  # type: ignore[no-untyped-def]
    api, _ = api_and_order
    page = run_async(api.service.list(limit=100)).orders
    assert benchmark(encode, page).startswith(b"[")


def test_route_get_order_end_to_end_in_memory(benchmark, api_and_order, run_async) -> None:  # type: ignore[no-untyped-def]
    api, order = api_and_order
    request = HttpRequest("GET", f"/orders/{order.id}", "", {})
    assert benchmark(lambda: run_async(api.handle(request))).status == 200


def test_route_create_order_in_memory(benchmark, api_and_order, run_async) -> None:  # type: ignore[no-untyped-def]
    api, _ = api_and_order
    request = HttpRequest("POST", "/orders", "", {"content-type": "application/json"}, CREATE_BODY)
    assert benchmark(lambda: run_async(api.handle(request))).status == 201


def test_route_list_in_memory(benchmark, run_async) -> None:  # type: ignore[no-untyped-def]
    service, _, _ = make_service()
    for index in range(100):
        run_async(service.create(f"p{index}", 1))
    api = RestApi(service, json_endpoints={}, openapi_document=b"{}", max_body_bytes=65536)
    request = HttpRequest("GET", "/orders", "limit=20", {})
    assert benchmark(lambda: run_async(api.handle(request))).status == 200


def test_route_not_found(benchmark, api_and_order, run_async) -> None:  # type: ignore[no-untyped-def]
    api, _ = api_and_order
    request = HttpRequest("GET", "/nowhere", "", {})
    assert benchmark(lambda: run_async(api.handle(request))).status == 404


def test_service_update_in_memory(benchmark, api_and_order, run_async) -> None:  # type: ignore[no-untyped-def]
    api, order = api_and_order
    quantities = iter(range(2, 10**9))

    def update() -> Order:
        return run_async(api.service.update(str(order.id), quantity=next(quantities)))

    assert benchmark(update).version > 1


def test_cursor_round_trip(benchmark) -> None:  # type: ignore[no-untyped-def]
    codec = CursorCodec(b"bench")
    last = uuid.uuid4()
    assert benchmark(lambda: codec.decode(codec.encode(last))) == last


def test_log_line_formatting(benchmark) -> None:  # type: ignore[no-untyped-def]
    record = logging.makeLogRecord(
        {
            "msg": "request",
            "levelname": "INFO",
            "name": "orders.access",
            "method": "GET",
            "path": "/orders/x",
            "status": 200,
            "duration_ms": 1.234,
        }
    )
    assert benchmark(format_record, record).endswith(b"\n")


def test_protobuf_order_conversion(benchmark, api_and_order) -> None:  # type: ignore[no-untyped-def]
    _, order = api_and_order

    def convert_and_serialize() -> bytes:
        return orders_pb2.GetOrderResponse(order=order_to_pb(order)).SerializeToString()

    assert orders_pb2.GetOrderResponse.FromString(benchmark(convert_and_serialize)).order.id == str(order.id)


def test_protobuf_page_of_100_conversion(benchmark, api_and_order, run_async) -> None:  # type: ignore[no-untyped-def]
    api, _ = api_and_order
    page = run_async(api.service.list(limit=100)).orders

    def convert_and_serialize() -> bytes:
        return orders_pb2.ListOrdersResponse(orders=[order_to_pb(o) for o in page]).SerializeToString()

    assert len(orders_pb2.ListOrdersResponse.FromString(benchmark(convert_and_serialize)).orders) == 100


def test_protobuf_request_parse(benchmark) -> None:  # type: ignore[no-untyped-def]
    wire = orders_pb2.UpdateOrderRequest(
        id=str(uuid.uuid4()), product="keyboard", quantity=4, status=orders_pb2.ORDER_STATUS_CONFIRMED
    ).SerializeToString()

    def parse() -> str | None:
        return status_from_pb(orders_pb2.UpdateOrderRequest.FromString(wire).status)

    assert benchmark(parse) == "confirmed"
