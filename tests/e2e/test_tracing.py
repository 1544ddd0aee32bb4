"""`orders-service serve` with OTEL_EXPORTER_OTLP_ENDPOINT: every role exports its spans over OTLP/HTTP.

The collector is a stub in the test (an HTTP server recording what is POSTed to /v1/traces),
decoded with the OTLP protobuf definitions the exporter itself uses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import httpx
import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the tracing extra is not installed")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from service.grpc.pb import orders_pb2, orders_pb2_grpc
from tests.e2e.conftest import ServiceProcess

pytestmark = pytest.mark.e2e

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
GRPC_TRACE_ID = "5b8efff798038103d269b633813fc60c"


class Collector:
    """Records every OTLP/HTTP trace export as (resource attributes, span) pairs."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Any]] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest.FromString(body)
                    with collector.lock:
                        for resource_spans in request.resource_spans:
                            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                            for scope_spans in resource_spans.scope_spans:
                                collector.spans.extend((resource, span) for span in scope_spans.spans)
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def of_trace(self, trace_id: str) -> list[tuple[dict[str, Any], Any]]:
        with self.lock:
            return [(resource, span) for resource, span in self.spans if span.trace_id.hex() == trace_id]


def attributes(span: Any) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in span.attributes}


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@pytest.fixture
def collector() -> Iterator[Collector]:
    stub = Collector()
    stub.thread.start()
    try:
        yield stub
    finally:
        stub.server.shutdown()
        stub.server.server_close()


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_every_role_exports_spans_and_the_consumer_joins_the_request_trace(
    start_service: Callable[..., ServiceProcess], collector: Collector
) -> None:
    service = start_service(
        roles="http,grpc,worker",
        wait_for_grpc=True,
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_SERVICE_NAME="orders-e2e",
        OTEL_BSP_SCHEDULE_DELAY="100",  # export every 0.1 s (the SDK's own variable)
    )
    created = httpx.post(
        f"{service.base_url}/orders",
        json={"product": "book", "quantity": 1},
        headers={"traceparent": TRACEPARENT},
        timeout=5,
    )
    assert created.status_code == 201
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = orders_pb2_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]
        stub.GetOrder(
            orders_pb2.GetOrderRequest(id=created.json()["id"]),
            metadata=(("traceparent", f"00-{GRPC_TRACE_ID}-b7ad6b7169203331-01"),),
            timeout=5,
        )

    process_name = f"{service.stream} process"

    def consumed() -> list[tuple[dict[str, Any], Any]]:
        return [
            (resource, span)
            for resource, span in collector.of_trace(TRACE_ID)
            if span.name == process_name and attributes(span).get("orders.event") == "order.created"
        ]

    wait_until(lambda: bool(consumed()))
    wait_until(
        lambda: any(span.name == "orders.OrderService/GetOrder" for _, span in collector.of_trace(GRPC_TRACE_ID))
    )

    rest = collector.of_trace(TRACE_ID)
    by_name = {span.name: (resource, span) for resource, span in rest}
    assert {"POST /orders", "INSERT orders", process_name} <= set(by_name), sorted(by_name)
    (http_resource, server), [(worker_resource, consumer)] = by_name["POST /orders"], consumed()
    assert consumer.parent_span_id == server.span_id
    assert http_resource["service.name"] == worker_resource["service.name"] == "orders-e2e"
    assert (http_resource["orders.role"], worker_resource["orders.role"]) == ("http", "worker")
    assert http_resource["process.pid"] != worker_resource["process.pid"]

    grpc_spans = {span.name: (resource, span) for resource, span in collector.of_trace(GRPC_TRACE_ID)}
    grpc_resource, grpc_server = grpc_spans["orders.OrderService/GetOrder"]
    assert grpc_resource["orders.role"] == "grpc"
    assert grpc_spans["SELECT orders"][1].parent_span_id == grpc_server.span_id

    assert service.stop() == 0, service.logs()
    assert "Traceback" not in service.logs()
