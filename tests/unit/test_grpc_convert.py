from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import grpc
import msgspec
import pytest
from google.rpc import error_details_pb2, status_pb2

from service.domain import (
    FieldViolation,
    IdempotencyKeyReused,
    InvalidTransition,
    Order,
    OrderNotFound,
    OrderStatus,
    StoreUnavailable,
    ValidationFailed,
    VersionMismatch,
)
from service.grpc.convert import order_to_pb, rfc3339, status_from_pb
from service.grpc.pb import orders_pb2
from service.grpc.servicer import expected_version
from service.grpc.status import status_for


def test_order_to_pb_uses_the_same_timestamps_as_rest() -> None:
    moment = datetime(2026, 11, 24, 3, 36, 18, 648940, tzinfo=UTC)
    order = Order(
        id=uuid.uuid4(),
        product="book",
        quantity=2,
        status=OrderStatus.CONFIRMED,
        version=4,
        created_at=moment,
        updated_at=moment.replace(microsecond=0),
    )
    pb = order_to_pb(order)
    rest = msgspec.json.decode(msgspec.json.encode(order))
    assert (pb.id, pb.product, pb.quantity, pb.version) == (str(order.id), "book", 2, 4)
    assert pb.status == orders_pb2.ORDER_STATUS_CONFIRMED
    assert pb.created_at == rest["created_at"] == "2026-11-24T03:36:18.648940Z"
    assert pb.updated_at == rest["updated_at"] == "2026-11-24T03:36:18Z"


def test_status_from_pb() -> None:
    assert status_from_pb(orders_pb2.ORDER_STATUS_UNSPECIFIED) is None
    assert status_from_pb(orders_pb2.ORDER_STATUS_CANCELLED) == "cancelled"
    assert status_from_pb(99) == "99"  # the service layer rejects it with its usual message


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (OrderNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (InvalidTransition(OrderStatus.CANCELLED, OrderStatus.PENDING), grpc.StatusCode.FAILED_PRECONDITION),
        (IdempotencyKeyReused(), grpc.StatusCode.FAILED_PRECONDITION),
        (VersionMismatch(1, 2), grpc.StatusCode.ABORTED),
        (StoreUnavailable("database unreachable at 10.0.0.1"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_domain_errors_map_to_their_codes(exc: Exception, code: grpc.StatusCode) -> None:
    status = status_for(exc, "req-1")
    assert status.code == code
    if not isinstance(exc, StoreUnavailable):
        assert status.details == str(exc)
    else:
        assert "10.0.0.1" not in status.details


def test_validation_failed_carries_bad_request_with_grpc_field_names() -> None:
    exc = ValidationFailed([FieldViolation("limit", "must be between 1 and 1000"), FieldViolation("cursor", "bad")])
    status = status_for(exc, "req-1")
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "page_size: must be between 1 and 1000; page_token: bad"
    rich = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    assert rich.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and rich.message == status.details
    bad_request = error_details_pb2.BadRequest()
    assert rich.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("page_size", "must be between 1 and 1000"),
        ("page_token", "bad"),
    ]


def test_unexpected_errors_are_internal_logged_and_never_leak(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        status = status_for(RuntimeError("password=hunter2 at db:5432"), "req-9")
    assert status.code == grpc.StatusCode.INTERNAL
    assert "hunter2" not in status.details and "req-9" in status.details
    assert caplog.records and caplog.records[0].exc_info is not None


def test_expected_version() -> None:
    assert expected_version(0) is None
    assert expected_version(3) == 3
    with pytest.raises(ValidationFailed):
        expected_version(-1)


def test_rfc3339_matches_msgspec_for_any_zero_offset_zone() -> None:
    moment = datetime(2026, 1, 1, 12, tzinfo=ZoneInfo("Europe/London"))
    assert rfc3339(moment) == msgspec.json.decode(msgspec.json.encode(moment)) == "2026-01-01T12:00:00Z"
