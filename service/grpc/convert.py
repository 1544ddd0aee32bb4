"""Protobuf <-> domain conversions. No rules here: the service layer decides what is valid."""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

import msgspec

from service.domain import Order, OrderStatus
from service.grpc.pb import orders_pb2
from service.ports import FeedEntry

STATUS_TO_PB = {
    OrderStatus.PENDING: orders_pb2.ORDER_STATUS_PENDING,
    OrderStatus.CONFIRMED: orders_pb2.ORDER_STATUS_CONFIRMED,
    OrderStatus.CANCELLED: orders_pb2.ORDER_STATUS_CANCELLED,
}
PB_TO_STATUS = {value: key for key, value in STATUS_TO_PB.items()}
# gRPC names for the fields the service layer names after the REST API
FIELD_NAMES = {
    "limit": "page_size",
    "cursor": "page_token",
    "Idempotency-Key": "x-idempotency-key",
    "order_id": "order_ids",
}


_encode_json = msgspec.json.Encoder().encode


def rfc3339(moment: datetime) -> str:
    """Exactly the text the REST API's JSON carries: msgspec's RFC 3339 encoding (UTC as `Z`)."""
    return _encode_json(moment)[1:-1].decode()


def order_to_pb(order: Order) -> orders_pb2.Order:
    return orders_pb2.Order(
        id=str(order.id),
        product=order.product,
        quantity=order.quantity,
        status=STATUS_TO_PB[order.status],
        created_at=rfc3339(order.created_at),
        version=order.version,
        updated_at=rfc3339(order.updated_at),
    )


def status_from_pb(value: int) -> str | None:
    """None for UNSPECIFIED (no filter / unchanged); the status text, or the raw number when unknown
    (so that the service layer rejects it with its usual message)."""
    if value == orders_pb2.ORDER_STATUS_UNSPECIFIED:
        return None
    status = PB_TO_STATUS.get(value)  # type: ignore[call-overload]
    return status.value if status is not None else str(value)


class ChangeMessages:
    """The OrderChange of each feed entry, built once for all the watchers it goes to."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._built: OrderedDict[str, orders_pb2.OrderChange] = OrderedDict()

    def message(self, entry: FeedEntry) -> orders_pb2.OrderChange:
        built = self._built.get(entry.cursor)
        if built is None:
            built = self._built[entry.cursor] = orders_pb2.OrderChange(
                event=entry.event,
                order=order_to_pb(entry.order),
                event_id=entry.event_id,
                occurred_at=entry.occurred_at,
                cursor=entry.cursor,
            )
            if len(self._built) > self._capacity:
                self._built.popitem(last=False)
        return built
