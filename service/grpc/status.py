"""Maps every failure of a call to a gRPC status. The only place that does; never UNKNOWN."""

from __future__ import annotations

import logging
from typing import NamedTuple

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.domain import (
    ChangesUnavailable,
    CursorExpired,
    IdempotencyKeyReused,
    InvalidTransition,
    OrderNotFound,
    PermissionDenied,
    StoreOverloaded,
    StoreUnavailable,
    Unauthenticated,
    ValidationFailed,
    VersionMismatch,
    WatcherTooSlow,
)
from service.grpc.convert import FIELD_NAMES
from service.ratelimit import RateLimited

log = logging.getLogger(__name__)


class TooManyCalls(Exception):
    """More calls of the order service are in flight in this process than it takes (shed at once)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} calls are in flight in this process; retry later")


_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (OrderNotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidTransition, grpc.StatusCode.FAILED_PRECONDITION),
    (IdempotencyKeyReused, grpc.StatusCode.FAILED_PRECONDITION),
    (VersionMismatch, grpc.StatusCode.ABORTED),
    (CursorExpired, grpc.StatusCode.OUT_OF_RANGE),
    (WatcherTooSlow, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
]


def status_for(exc: BaseException, request_id: str) -> grpc.Status:
    if isinstance(exc, ValidationFailed):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=FIELD_NAMES.get(v.field, v.field), description=v.message)
            for v in exc.violations
        ]
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=violations))
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        return rpc_status.to_status(
            status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail])
        )
    if isinstance(exc, RateLimited):
        return _rate_limited(exc)
    if isinstance(exc, TooManyCalls):  # shed at once: not logged per call
        return _plain(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, StoreOverloaded):  # shed at once: not logged per call
        return _plain(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls are waiting for the database; retry later")
    if isinstance(exc, StoreUnavailable):
        log.warning("database unavailable: %s", exc)
        return _plain(grpc.StatusCode.UNAVAILABLE, "the database is unavailable; retry later")
    if isinstance(exc, ChangesUnavailable):
        log.warning("change feed unavailable: %s", exc)
        return _plain(grpc.StatusCode.UNAVAILABLE, "the change feed is unavailable; retry later")
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return _plain(code, str(exc))
    log.error("unhandled error", exc_info=exc)
    return _plain(grpc.StatusCode.INTERNAL, f"an unexpected error occurred; quote request id {request_id}")


def _plain(code: grpc.StatusCode, message: str) -> grpc.Status:
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message))


class _Status(NamedTuple):
    """What `abort_with_status` reads of a status (grpc_status's own cannot take more metadata)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _rate_limited(exc: RateLimited) -> grpc.Status:
    """RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` detail, and in trailing metadata the same
    hints REST sends as headers: `retry-after` (seconds), `ratelimit-policy` and `ratelimit`."""
    retry = any_pb2.Any()
    retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=exc.retry_after_seconds)))
    status = rpc_status.to_status(
        status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=str(exc), details=[retry])
    )
    hints = (("retry-after", str(exc.retry_after_seconds)), ("ratelimit-policy", exc.policy), ("ratelimit", exc.state))
    return _Status(status.code, status.details, (*status.trailing_metadata, *hints))
