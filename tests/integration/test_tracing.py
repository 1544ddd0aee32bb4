"""Opt-in tracing against real PostgreSQL and Redis, spans caught by the SDK's in-memory exporter.

The objects are the ones the composition root builds (RestApi, the gRPC servicer, the relay and
the consumer over the real PostgreSQL store), with an in-memory tracer handed to `Resources`
instead of the OTLP one a process builds from OTEL_EXPORTER_OTLP_ENDPOINT.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import msgspec
import pytest

pytest.importorskip("opentelemetry.sdk.trace", reason="the tracing extra is not installed")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.app import Resources, build_consumer, build_relay, build_rest_api, build_service
from service.config import Settings, load_settings
from service.grpc.pb import orders_pb2, orders_pb2_grpc
from service.grpc.servicer import OrderServicer
from service.http.api import HttpRequest, RestApi
from service.observability.otel import OtelTracer
from service.observability.tracing import BATCH_SIZE

if TYPE_CHECKING:
    from tests.conftest import IsolatedSchema, TestServices

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Caught:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = OtelTracer(self.provider)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name == name]

    def children_of(self, parent: ReadableSpan) -> list[ReadableSpan]:
        parent_id = parent.context.span_id
        return [span for span in self.spans() if span.parent is not None and span.parent.span_id == parent_id]


def trace_id(span: ReadableSpan) -> str:
    return f"{span.context.trace_id:032x}"


def span_id(span: ReadableSpan) -> str:
    return f"{span.context.span_id:016x}"


@pytest.fixture
def caught() -> Iterator[Caught]:
    found = Caught()
    try:
        yield found
    finally:
        found.provider.shutdown()


@pytest.fixture
def settings(schema: IsolatedSchema, test_services: TestServices) -> Settings:
    return load_settings(
        {},
        database_url=schema.dsn,
        redis_url=test_services.redis_url,
        events_stream=f"tracing-test-{uuid.uuid4().hex[:8]}",
        db_pool_size=4,
        relay_poll_interval=0.05,
    )


@pytest.fixture
async def resources(settings: Settings, caught: Caught) -> AsyncIterator[Resources]:
    owned = Resources(settings, role="http", tracer=caught.tracer)
    try:
        yield owned
    finally:
        await owned.redis.delete(settings.events_stream, f"{settings.events_stream}.dlq")
        await owned.aclose()


@pytest.fixture
def api(settings: Settings, resources: Resources) -> RestApi:
    return build_rest_api(settings, resources)


def post_order(traceparent: str | None = TRACEPARENT) -> HttpRequest:
    headers = {"content-type": "application/json"}
    if traceparent is not None:
        headers["traceparent"] = traceparent
    return HttpRequest("POST", "/orders", "", headers, b'{"product": "book", "quantity": 2}')


async def test_http_request_continues_the_incoming_trace_with_a_child_db_span(api: RestApi, caught: Caught) -> None:
    response = await api.handle(post_order())
    assert response.status == 201

    [server] = caught.named("POST /orders")
    assert server.kind is SpanKind.SERVER
    assert trace_id(server) == TRACE_ID
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID
    attributes = dict(server.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/orders"
    assert attributes["http.response.status_code"] == 201
    assert attributes["orders.request_id"] == dict(response.headers)["x-request-id"]

    [db] = caught.children_of(server)
    assert db.kind is SpanKind.CLIENT
    assert db.name == "INSERT orders"
    db_attributes = dict(db.attributes or {})
    assert db_attributes["db.system"] == "postgresql"
    assert db_attributes["db.operation.name"] == "INSERT"
    assert db_attributes[BATCH_SIZE] == 1
    assert "book" not in json.dumps(db_attributes), "no SQL parameters in span attributes"


async def test_the_route_template_names_the_span_never_the_raw_id(api: RestApi, caught: Caught) -> None:
    created = await api.handle(post_order(traceparent=None))
    order_id = msgspec.json.decode(created.body)["id"]
    response = await api.handle(HttpRequest("GET", f"/orders/{order_id}", "", {}))
    assert response.status == 200
    missing = await api.handle(HttpRequest("GET", f"/orders/{uuid.uuid4()}", "", {}))
    assert missing.status == 404

    gets = caught.named("GET /orders/{id}")
    assert len(gets) == 2
    assert all(order_id not in span.name for span in caught.spans())
    assert [dict(span.attributes or {})["http.response.status_code"] for span in gets] == [200, 404]
    assert all(span.status.status_code is not StatusCode.ERROR for span in gets), "a 404 is not a server error"
    [post] = caught.named("POST /orders")
    assert post.parent is None, "no incoming traceparent: a new trace"
    assert len({trace_id(span) for span in [post, *gets]}) == 3


async def test_reads_coalesced_into_one_statement_each_keep_their_span(api: RestApi, caught: Caught) -> None:
    created = await api.handle(post_order(traceparent=None))
    order_id = msgspec.json.decode(created.body)["id"]
    caught.exporter.clear()

    responses = await asyncio.gather(*(api.handle(HttpRequest("GET", f"/orders/{order_id}", "", {})) for _ in range(3)))
    assert [r.status for r in responses] == [200, 200, 200]

    servers = caught.named("GET /orders/{id}")
    assert len(servers) == 3
    for server in servers:
        [db] = caught.children_of(server)
        assert db.name == "SELECT orders"
        assert dict(db.attributes or {})[BATCH_SIZE] == 3, "the three reads went as one statement"


async def test_grpc_call_continues_the_incoming_trace_with_a_child_db_span(
    settings: Settings, resources: Resources, caught: Caught
) -> None:
    server = grpc.aio.server()
    servicer = OrderServicer(build_service(settings, resources.db, resources.tracer), tracer=resources.tracer)
    orders_pb2_grpc.add_OrderServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = orders_pb2_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]
            reply = await stub.CreateOrder(
                orders_pb2.CreateOrderRequest(product="pen", quantity=1), metadata=(("traceparent", TRACEPARENT),)
            )
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetOrder(orders_pb2.GetOrderRequest(id=str(uuid.uuid4())))
    finally:
        await server.stop(None)
    assert reply.order.product == "pen"
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND

    [create] = caught.named("orders.OrderService/CreateOrder")
    assert create.kind is SpanKind.SERVER
    assert trace_id(create) == TRACE_ID
    attributes = dict(create.attributes or {})
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.method"] == "CreateOrder"
    assert attributes["rpc.grpc.status_code"] == 0
    [db] = caught.children_of(create)
    assert db.name == "INSERT orders"
    assert dict(db.attributes or {})["db.system"] == "postgresql"

    [get] = caught.named("orders.OrderService/GetOrder")
    assert trace_id(get) != TRACE_ID
    assert dict(get.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert get.status.status_code is not StatusCode.ERROR, "NOT_FOUND is the client's error, not the server's"
    assert [span.name for span in caught.children_of(get)] == ["SELECT orders"]


async def test_the_consumer_span_of_a_created_order_shares_the_request_trace(
    settings: Settings, resources: Resources, api: RestApi, caught: Caught
) -> None:
    response = await api.handle(post_order())
    assert response.status == 201
    [server] = caught.named("POST /orders")

    # Published rows are kept (a retention) so their traceparents can be read afterwards.
    relay = build_relay(msgspec.structs.replace(settings, outbox_retention=3600.0), resources)
    consumer = build_consumer(settings, resources, build_service(settings, resources.db, resources.tracer))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(relay.run(stop)), asyncio.create_task(consumer.run(stop))]
    try:
        async with asyncio.timeout(20):
            while len(caught.named(f"{settings.events_stream} process")) < 2:  # order.created, order.updated
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=10)

    by_event = {
        dict(span.attributes or {})["orders.event"]: span for span in caught.named(f"{settings.events_stream} process")
    }
    process = by_event["order.created"]
    assert process.kind is SpanKind.CONSUMER
    assert trace_id(process) == TRACE_ID, "the consumer's work joins the request's trace"
    assert process.parent is not None and process.parent.span_id == server.context.span_id
    attributes = dict(process.attributes or {})
    assert attributes["messaging.system"] == "redis"
    assert attributes["orders.outcome"] == "confirmed"
    db_calls = [span for span in caught.children_of(process) if span.kind is SpanKind.CLIENT]
    assert {span.name for span in db_calls} == {"SELECT orders", "UPDATE orders"}
    # The confirmation's own event (order.updated) continues from the consumer span in turn.
    follow_up = by_event["order.updated"]
    assert trace_id(follow_up) == TRACE_ID
    assert follow_up.parent is not None and follow_up.parent.span_id == process.context.span_id

    publishes = caught.named(f"{settings.events_stream} publish")
    assert all(span.kind is SpanKind.PRODUCER and span.parent is None for span in publishes)
    linked = [link.context.span_id for span in publishes for link in span.links]
    assert linked == [server.context.span_id, process.context.span_id]

    # The confirmation's own outbox event carries the consumer span's context onwards.
    rows = await resources.db.fetch("SELECT event_type, traceparent FROM outbox ORDER BY id")
    assert rows == [
        ("order.created", f"00-{TRACE_ID}-{span_id(server)}-01"),
        ("order.updated", f"00-{TRACE_ID}-{span_id(process)}-01"),
    ]


NO_OTEL_SCRIPT = """
import asyncio, importlib.abc, json, sys

class NoOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"blocked: {name}")
        return None

if sys.argv[1] == "blocked":
    sys.meta_path.insert(0, NoOpenTelemetry())

import service.cli, service.supervisor, service.entrypoints.roles, service.grpc.server
import service.entrypoints.http, service.entrypoints.grpc, service.entrypoints.worker
from service.app import Resources, build_rest_api, build_service
from service.config import load_settings
from service.grpc.servicer import OrderServicer
from service.http.api import HttpRequest

async def main():
    settings = load_settings()
    resources = Resources(settings, role="http")
    api = build_rest_api(settings, resources)
    OrderServicer(build_service(settings, resources.db, resources.tracer), tracer=resources.tracer)
    created = await api.handle(HttpRequest(
        "POST", "/orders", "", {"content-type": "application/json", "traceparent": sys.argv[2]},
        b'{"product": "book", "quantity": 1}'))
    order_id = json.loads(created.body)["id"]
    got = await api.handle(HttpRequest("GET", "/orders/" + order_id, "", {}))
    rows = await resources.db.fetch("SELECT traceparent FROM outbox")
    await resources.aclose()
    print(json.dumps({
        "statuses": [created.status, got.status],
        "tracer": type(resources.tracer).__name__,
        "outbox_traceparents": [row[0] for row in rows],
        "modules": sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"),
        "otel_adapter_loaded": "service.observability.otel" in sys.modules,
    }))

asyncio.run(main())
"""


@pytest.mark.parametrize("mode", ["blocked", "installed"])
def test_without_the_endpoint_the_serve_path_runs_no_opentelemetry(
    mode: str, schema: IsolatedSchema, test_services: TestServices
) -> None:
    """Unset OTEL_EXPORTER_OTLP_ENDPOINT: the app builds and serves with OpenTelemetry made
    unimportable (so none of it is on the path), and with it installed our code imports none of
    its tracing (redis-py itself imports `opentelemetry.sdk.metrics` when present; inert)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(DATABASE_URL=schema.dsn, REDIS_URL=test_services.redis_url)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NO_OTEL_SCRIPT), mode, TRACEPARENT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["statuses"] == [201, 200]
    assert report["tracer"] == "NoTracer"
    assert report["outbox_traceparents"] == [TRACEPARENT], "tracing off: the incoming traceparent is passed on"
    modules: list[str] = report["modules"]
    if mode == "blocked":
        assert modules == []
    else:
        tracing = [m for m in modules if m.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter"))]
        assert tracing == []
    assert report["otel_adapter_loaded"] is False
