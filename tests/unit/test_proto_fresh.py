"""The committed generated code matches proto/orders.proto, which keeps the reference field numbers."""

from __future__ import annotations

import pytest

from scripts.gen_proto import stale_files
from service.grpc.pb import orders_pb2


def test_generated_code_is_current() -> None:
    assert stale_files() == [], "run `make proto` and commit the result"


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        ("Order", {"id": 1, "product": 2, "quantity": 3, "status": 4, "created_at": 5, "version": 6, "updated_at": 7}),
        ("CreateOrderRequest", {"product": 1, "quantity": 2}),
        ("CreateOrderResponse", {"order": 1}),
        ("GetOrderRequest", {"id": 1}),
        ("GetOrderResponse", {"order": 1}),
        ("ListOrdersRequest", {"page_size": 1, "page_token": 2, "status": 3}),
        ("ListOrdersResponse", {"orders": 1, "next_page_token": 2}),
        ("UpdateOrderRequest", {"id": 1, "product": 2, "quantity": 3, "status": 4, "expected_version": 5}),
        ("UpdateOrderResponse", {"order": 1}),
        ("DeleteOrderRequest", {"id": 1, "expected_version": 2}),
        ("DeleteOrderResponse", {}),
    ],
)
def test_field_numbers_match_the_reference(message: str, fields: dict[str, int]) -> None:
    descriptor = orders_pb2.DESCRIPTOR.message_types_by_name[message]
    assert {f.name: f.number for f in descriptor.fields} == fields


def test_enum_and_service_shape() -> None:
    assert dict(orders_pb2.OrderStatus.items()) == {
        "ORDER_STATUS_UNSPECIFIED": 0,
        "ORDER_STATUS_PENDING": 1,
        "ORDER_STATUS_CONFIRMED": 2,
        "ORDER_STATUS_CANCELLED": 3,
    }
    service = orders_pb2.DESCRIPTOR.services_by_name["OrderService"]
    assert service.full_name == "orders.OrderService"
    assert [m.name for m in service.methods] == [
        "CreateOrder",
        "GetOrder",
        "ListOrders",
        "UpdateOrder",
        "DeleteOrder",
        "WatchOrders",
    ]
    watch = service.methods_by_name["WatchOrders"]
    assert watch.server_streaming and not watch.client_streaming
    assert [(f.name, f.number) for f in orders_pb2.OrderChange.DESCRIPTOR.fields] == [
        ("event", 1),
        ("order", 2),
        ("event_id", 3),
        ("occurred_at", 4),
        ("cursor", 5),
    ]
    assert (
        orders_pb2.Order.DESCRIPTOR.fields_by_name["quantity"].type
        == orders_pb2.Order.DESCRIPTOR.fields_by_name["version"].type
    )  # int64 both


def test_round_trip() -> None:
    order = orders_pb2.Order(
        id="x",
        product="p",
        quantity=2**40,
        status=orders_pb2.ORDER_STATUS_CONFIRMED,
        created_at="2026-01-01T00:00:00Z",
        version=3,
        updated_at="2026-01-01T00:00:01Z",
    )
    assert orders_pb2.Order.FromString(order.SerializeToString()) == order
