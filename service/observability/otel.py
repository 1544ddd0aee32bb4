"""The OpenTelemetry implementation of the tracing port. Imported only when tracing is on.

Needs the `tracing` extra (opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http). The
provider is this object's own (not the global one), so tests can build one with an in-memory
exporter next to a process's real one, and nothing else in the process is traced by accident.
The SDK's own environment variables still apply (OTEL_TRACES_SAMPLER, OTEL_BSP_*, ...).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service import __version__
from service.observability.tracing import Attributes, AttributeValue, Span, well_formed_traceparent
from service.observability.tracing import SpanKind as Kind

_KINDS: dict[Kind, SpanKind] = {
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "consumer": SpanKind.CONSUMER,
    "producer": SpanKind.PRODUCER,
    "internal": SpanKind.INTERNAL,
}
_propagator = TraceContextTextMapPropagator()


def _context_of(traceparent: str) -> Context | None:
    """The context a W3C traceparent names; None when it does not parse."""
    context = _propagator.extract({"traceparent": traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


class _OtelSpan:
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def set_error(self, description: str) -> None:
        self._span.set_status(Status(StatusCode.ERROR, description))


class OtelTracer:
    """Spans from one TracerProvider, W3C trace context in and out."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("orders-service", __version__)

    @property
    def enabled(self) -> bool:
        return True

    def span(
        self,
        name: str,
        kind: Kind,
        *,
        parent: str | None = None,
        links: Sequence[str] = (),
        attributes: Attributes | None = None,
    ) -> AbstractContextManager[Span]:
        return self._span(name, kind, parent, links, attributes)

    @contextmanager
    def _span(
        self, name: str, kind: Kind, parent: str | None, links: Sequence[str], attributes: Attributes | None
    ) -> Iterator[Span]:
        context = _context_of(parent) if parent else None
        span_links = []
        for traceparent in links:
            linked = _context_of(traceparent)
            if linked is not None:
                span_links.append(Link(trace.get_current_span(linked).get_span_context()))
        # A server span's outcome is its response status, set by the transport: an exception
        # leaving it (gRPC's abort for a 404-like NOT_FOUND) is not by itself a failure.
        recorded = kind != "server"
        with self._tracer.start_as_current_span(
            name,
            context=context,
            kind=_KINDS[kind],
            attributes=attributes,
            links=span_links,
            record_exception=recorded,
            set_status_on_exception=recorded,
        ) as span:
            yield _OtelSpan(span)

    def traceparent(self, fallback: str | None) -> str | None:
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        return carrier.get("traceparent") or well_formed_traceparent(fallback)

    def shutdown(self) -> None:
        self._provider.shutdown()


def provider_for(exporter: SpanExporter, *, service_name: str, role: str) -> TracerProvider:
    """A provider exporting through `exporter` in batches (a background thread of this process)."""
    resource = Resource.create(
        {"service.name": service_name, "service.version": __version__, "process.pid": os.getpid(), "orders.role": role}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def otlp_tracer(endpoint: str, *, service_name: str, role: str) -> OtelTracer:
    """A tracer exporting OTLP/HTTP (protobuf) to `<endpoint>/v1/traces`, as the OTLP spec says
    for OTEL_EXPORTER_OTLP_ENDPOINT (Jaeger, Tempo and the OpenTelemetry Collector listen on :4318)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    return OtelTracer(provider_for(exporter, service_name=service_name, role=role))
