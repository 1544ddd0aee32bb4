"""The tracing port: the no-op tracer, settings, the OpenTelemetry adapter, batch-size attribution."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from service.app import tracer_for
from service.config import ConfigError, load_settings
from service.http.api import HttpRequest, RestApi
from service.observability.tracing import BATCH_SIZE, NO_TRACER, NOOP_SPAN, AttributeValue, NoTracer
from service.store.coalesce import Coalescer
from tests.unit.fakes import make_service

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_noop_tracer_records_nothing_and_passes_the_incoming_traceparent_on() -> None:
    assert NO_TRACER.enabled is False
    with NO_TRACER.span("x", "server", parent=TRACEPARENT, attributes={"a": 1}) as span:
        span.set_attribute("b", 2)
        span.set_error("nope")
        assert span is NOOP_SPAN
    assert NO_TRACER.traceparent(TRACEPARENT) == TRACEPARENT
    assert NO_TRACER.traceparent(None) is None
    NO_TRACER.shutdown()


def test_tracing_is_off_unless_the_endpoint_is_set() -> None:
    settings = load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": ""})
    assert settings.otel_exporter_otlp_endpoint is None
    assert settings.otel_service_name == "orders-service"
    assert isinstance(tracer_for(settings, "http"), NoTracer)


@pytest.mark.parametrize("bad", ["127.0.0.1:4318", "grpc://collector:4317", "http://"])
def test_a_bad_endpoint_is_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": bad})


def test_the_service_name_defaults_when_empty() -> None:
    # "" reads as unset, as for every setting.
    assert load_settings({"OTEL_SERVICE_NAME": ""}).otel_service_name == "orders-service"
    assert load_settings({"OTEL_SERVICE_NAME": "billing"}).otel_service_name == "billing"


class Recorded:
    def __init__(self) -> None:
        self.attributes: dict[str, AttributeValue] = {}

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.attributes[key] = value

    def set_error(self, description: str) -> None:
        raise AssertionError("not expected")


async def test_each_coalesced_call_learns_the_size_of_its_batch() -> None:
    async def run_batch(items: list[int]) -> list[int]:
        return [item * 2 for item in items]

    coalescer: Coalescer[int, int] = Coalescer(run_batch, max_batch=3)
    spans = [Recorded() for _ in range(4)]
    results = await asyncio.gather(*(coalescer.submit(i, span) for i, span in enumerate(spans)), coalescer.submit(9))
    assert results == [0, 2, 4, 6, 18]
    # max_batch 3: the first three went together, the fourth with the span-less fifth call.
    assert [span.attributes[BATCH_SIZE] for span in spans] == [3, 3, 3, 2]


# ---- the OpenTelemetry adapter (tracing extra) ---------------------------------------------------

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the tracing extra is not installed")


@pytest.fixture
def memory() -> Iterator[tuple[object, object]]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from service.observability.otel import OtelTracer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield OtelTracer(provider), exporter
    finally:
        provider.shutdown()


def test_spans_continue_a_traceparent_and_hand_on_their_own(memory: tuple[object, object]) -> None:
    from service.observability.otel import OtelTracer

    tracer, exporter = memory
    assert isinstance(tracer, OtelTracer)
    assert tracer.traceparent(TRACEPARENT) == TRACEPARENT  # no span current
    assert tracer.traceparent("junk") is None
    with tracer.span("outer", "server", parent=TRACEPARENT) as span:
        span.set_attribute("k", "v")
        own = tracer.traceparent(TRACEPARENT)
        with tracer.span("inner", "client"):
            pass
    inner, outer = exporter.get_finished_spans()  # type: ignore[attr-defined]
    assert f"{outer.context.trace_id:032x}" == TRACEPARENT.split("-")[1]
    assert own == f"00-{outer.context.trace_id:032x}-{outer.context.span_id:016x}-01"
    assert inner.parent.span_id == outer.context.span_id
    assert dict(outer.attributes) == {"k": "v"}


@pytest.mark.parametrize("garbage", ["", "nonsense", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "x" * 10_000])
def test_a_traceparent_that_does_not_parse_starts_a_new_trace(memory: tuple[object, object], garbage: str) -> None:
    tracer, exporter = memory
    with tracer.span("s", "consumer", parent=garbage, links=[garbage, TRACEPARENT]):  # type: ignore[attr-defined]
        pass
    [span] = exporter.get_finished_spans()  # type: ignore[attr-defined]
    assert span.parent is None
    assert [f"{link.context.trace_id:032x}" for link in span.links] == [TRACEPARENT.split("-")[1]]


def test_an_exception_fails_a_client_span_but_not_a_server_span(memory: tuple[object, object]) -> None:
    from opentelemetry.trace import StatusCode

    tracer, exporter = memory
    for kind in ("client", "server"):
        with pytest.raises(RuntimeError), tracer.span(kind, kind):  # type: ignore[attr-defined]
            raise RuntimeError("boom")
    client, server = exporter.get_finished_spans()  # type: ignore[attr-defined]
    assert client.status.status_code is StatusCode.ERROR
    assert server.status.status_code is StatusCode.UNSET


def test_the_process_tracer_names_the_service_and_role() -> None:
    settings = load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SERVICE_NAME": "orders-x"})
    tracer = tracer_for(settings, "grpc")
    try:
        assert tracer.enabled
        resource = tracer._provider.resource.attributes  # type: ignore[attr-defined]
        assert resource["service.name"] == "orders-x"
        assert resource["orders.role"] == "grpc"
    finally:
        tracer.shutdown()  # nothing recorded: nothing sent to the (closed) port


async def test_rest_spans_name_the_route_template_and_never_a_client_method(memory: tuple[object, object]) -> None:
    tracer, exporter = memory
    api = RestApi(
        make_service()[0],
        json_endpoints={},
        openapi_document=b"{}",
        max_body_bytes=1024,
        tracer=tracer,  # type: ignore[arg-type]
    )
    for method, path in (("GET", "/health"), ("BREW", "/orders"), ("GET", "/nowhere/at/all")):
        await api.handle(HttpRequest(method, path, "", {}))
    names = [span.name for span in exporter.get_finished_spans()]  # type: ignore[attr-defined]
    assert names == ["GET /health", "_OTHER /orders", "GET"]


def test_without_tracing_the_rest_handler_is_the_plain_method() -> None:
    api = RestApi(make_service()[0], json_endpoints={}, openapi_document=b"{}", max_body_bytes=1)
    assert api.handle.__func__ is RestApi.handle  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (TRACEPARENT, True),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future-field", True),
        (TRACEPARENT + "-extra", False),  # version 00 has exactly four fields
        (TRACEPARENT.upper(), False),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
        ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01", False),
        ("00-ab-cd-01", False),
        ("\ufffd", False),
        ("x" * 8000, False),
        ("", False),
    ],
)
def test_tracing_off_passes_on_only_a_well_formed_traceparent(value: str, kept: bool) -> None:
    assert NO_TRACER.traceparent(value) == (value if kept else None)


def test_an_endpoint_without_the_extra_installed_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def without_opentelemetry(name: str, *args: object) -> object:
        return None if name.startswith("opentelemetry") else real_find_spec(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", without_opentelemetry)
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed"):
        load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
