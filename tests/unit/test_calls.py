"""The call envelope: REST and gRPC record the same metric protocol and write the same access line."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import msgspec
import pytest

from service.grpc.pb import orders_pb2
from service.grpc.servicer import OrderServicer
from service.http.api import HttpRequest, RestApi
from service.observability import logging as obs_logging
from service.observability.calls import accept_request_id
from service.observability.logging import JsonLineHandler, log_access, request_id_var, role_var
from tests.unit.fakes import make_service

FIELDS = ["time", "level", "message", "logger", "request_id", "role", "method", "path", "status", "code", "duration_ms"]


class RecordingMetrics:
    def __init__(self) -> None:
        self.http: list[tuple[str, str, int]] = []
        self.grpc: list[tuple[str, str]] = []

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http.append((route, method, status))

    def observe_grpc(self, method: str, code: str, seconds: float) -> None:
        self.grpc.append((method, code))

    async def render(self) -> tuple[str, bytes]:
        return "text/plain", b""


class Aborted(Exception):
    pass


class FakeContext:
    """The parts of grpc.aio.ServicerContext the servicer uses."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata
        self.initial: Any = None
        self.status: grpc.Status | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def send_initial_metadata(self, metadata: Any) -> None:
        self.initial = metadata

    def set_trailing_metadata(self, metadata: Any) -> None:
        return None

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise Aborted


class Captured:
    def __init__(self) -> None:
        self.stream = io.BytesIO()
        self.handler = JsonLineHandler(io.TextIOWrapper(self.stream, write_through=True))

    def lines(self) -> list[dict[str, Any]]:
        self.handler.flush()  # inside a running loop, lines wait for the end of the loop turn
        return [msgspec.json.decode(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def access_lines() -> Iterator[Captured]:
    """The access lines written while the test runs, through the service's own line writer."""
    captured = Captured()
    saved_sink, saved_level = obs_logging._line_sink, logging.getLogger("orders.access").level
    obs_logging._line_sink = captured.handler
    logging.getLogger("orders.access").setLevel(logging.INFO)
    token = role_var.set("test")
    try:
        yield captured
    finally:
        role_var.reset(token)
        obs_logging._line_sink = saved_sink
        logging.getLogger("orders.access").setLevel(saved_level)


async def test_rest_and_grpc_write_the_same_access_line_and_record_one_metric_each(access_lines: Captured) -> None:
    metrics = RecordingMetrics()
    service = make_service()[0]
    api = RestApi(service, json_endpoints={}, openapi_document=b"{}", max_body_bytes=1024, metrics=metrics)
    servicer = OrderServicer(service, metrics=metrics)

    response = await api.handle(HttpRequest("GET", "/orders/nope", "", {"x-request-id": "rest-1"}))
    context = FakeContext((("x-request-id", "grpc-1"),))
    with pytest.raises(Aborted):
        await servicer.GetOrder(orders_pb2.GetOrderRequest(id="nope"), context)  # type: ignore[arg-type]

    assert response.status == 404 and context.status is not None
    assert context.status.code == grpc.StatusCode.NOT_FOUND
    assert context.initial == (("x-request-id", "grpc-1"),)
    rest, rpc = access_lines.lines()
    assert list(rest) == list(rpc) == FIELDS
    assert {**rest, "time": None, "duration_ms": None} == {
        "time": None,
        "level": "INFO",
        "message": "request",
        "logger": "orders.access",
        "request_id": "rest-1",
        "role": "test",
        "method": "GET",
        "path": "/orders/nope",
        "status": 404,
        "code": "NOT_FOUND",
        "duration_ms": None,
    }
    assert {**rpc, "time": None, "duration_ms": None} == {
        **rest,
        "time": None,
        "duration_ms": None,
        "request_id": "grpc-1",
        "method": "GetOrder",
        "path": "/orders.OrderService/GetOrder",
        "status": grpc.StatusCode.NOT_FOUND.value[0],
    }
    assert isinstance(rpc["duration_ms"], float) and rpc["time"].endswith("Z")
    assert metrics.http == [("/orders/{id}", "GET", 404)]
    assert metrics.grpc == [("GetOrder", "NOT_FOUND")]


def test_the_fast_line_has_the_shape_of_the_logging_handlers_line(access_lines: Captured) -> None:
    """Without our line writer (logging configured by someone else) the access line goes through
    the logging module: the same fields as the fast line."""
    plain = Captured()
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    root.handlers[:] = [plain.handler]
    root.setLevel(logging.INFO)
    token = request_id_var.set("rid-1")
    try:
        log_access("GetOrder", "/orders.OrderService/GetOrder", 5, "NOT_FOUND", 0.0012345)
        saved_sink, obs_logging._line_sink = obs_logging._line_sink, None
        try:
            log_access("GetOrder", "/orders.OrderService/GetOrder", 5, "NOT_FOUND", 0.0012345)
        finally:
            obs_logging._line_sink = saved_sink
    finally:
        request_id_var.reset(token)
        root.handlers[:] = saved
        root.setLevel(level)
    (fast,) = access_lines.lines()
    (slow,) = plain.lines()
    assert list(fast) == list(slow) == FIELDS
    assert {**fast, "time": None} == {**slow, "time": None}
    assert fast["duration_ms"] == 1.235 or fast["duration_ms"] == 1.234


@pytest.mark.parametrize("raw", [None, "", "x" * 129, "has space", "naïve"])
def test_unacceptable_request_ids_are_replaced(raw: str | None) -> None:
    accepted = accept_request_id(raw)
    assert accepted != raw and len(accepted) == 36


def test_acceptable_request_ids_are_kept() -> None:
    assert accept_request_id("abc-123_~!") == "abc-123_~!"
    assert accept_request_id("x" * 128) == "x" * 128
