"""Opt-in tracing: the small port the rest of the code calls, and its no-op implementation.

Tracing is on only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Then each process (every granian
worker, gRPC process and event worker; the supervisor has no request path and traces nothing)
builds its own OpenTelemetry provider (`service.observability.otel`, imported only then) after it
has started. When the variable is unset, `NO_TRACER` is used everywhere: nothing from
`opentelemetry` is imported by this package, and the request path pays a flag check at most
(REST and gRPC wrap a request in a span, and the store its calls, only when `tracer.enabled`),
plus, on writes, the check that an incoming traceparent is well formed before it is stored.

The span tree of one traced request (see README, "Tracing"):

    SERVER  "POST /orders" | "orders.OrderService/CreateOrder"   (continues an incoming traceparent)
      CLIENT  "INSERT orders"   db.system=postgresql, db.operation.name, db.operation.batch.size
    ... the outbox row carries the SERVER span's traceparent; the worker's
    CONSUMER "orders process" (child of that span, same trace id)
      CLIENT  "SELECT orders" / "UPDATE orders" ...

The relay publishes outbox rows in batches that mix many traces; its PRODUCER span "orders publish"
is a root of its own, linked to each published event's span.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Literal, Protocol

AttributeValue = str | bool | int | float
Attributes = Mapping[str, AttributeValue]
SpanKind = Literal["server", "client", "consumer", "producer", "internal"]

BATCH_SIZE = "db.operation.batch.size"
"""Attribute of a database span: how many requests' calls went to PostgreSQL in the one statement."""

# W3C Trace Context: version 00 is exactly these 55 characters; a later version may append fields.
_TRACEPARENT = re.compile(
    r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(?:-[\x21-\x7e]{1,200})?"
)


def well_formed_traceparent(value: str | None) -> str | None:
    """`value` when it is a W3C traceparent, else None: a client's junk is not stored in events."""
    if value is None or _TRACEPARENT.fullmatch(value) is None or (value[:2] == "00" and len(value) != 55):
        return None
    return value


class Span(Protocol):
    def set_attribute(self, key: str, value: AttributeValue) -> None: ...

    def set_error(self, description: str) -> None:
        """Mark the span failed (an exception leaving the span's `with` block does so by itself)."""
        ...


class Tracer(Protocol):
    @property
    def enabled(self) -> bool: ...

    def span(
        self,
        name: str,
        kind: SpanKind,
        *,
        parent: str | None = None,
        links: Sequence[str] = (),
        attributes: Attributes | None = None,
    ) -> AbstractContextManager[Span]:
        """A span, current while the block runs.

        `parent`: a W3C traceparent to continue (an incoming header, an outbox row's); None (or one
        that does not parse) makes the span a child of the current span, or a new root.
        `links`: traceparents of related spans that are not its parent (a batch's members).
        """
        ...

    def traceparent(self, fallback: str | None) -> str | None:
        """The W3C traceparent of the current span (what work started now should continue), or
        `fallback` when no span is current (tracing off: the incoming header is passed on when it
        is well formed)."""
        ...

    def shutdown(self) -> None:
        """Export what is buffered and stop (the process is closing)."""
        ...


class _NoopSpan:
    __slots__ = ()

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        return None

    def set_error(self, description: str) -> None:
        return None

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


NOOP_SPAN = _NoopSpan()


class NoTracer:
    """Tracing off: every span is the one shared no-op object; nothing is recorded."""

    __slots__ = ()

    @property
    def enabled(self) -> bool:
        return False

    def span(
        self,
        name: str,
        kind: SpanKind,
        *,
        parent: str | None = None,
        links: Sequence[str] = (),
        attributes: Attributes | None = None,
    ) -> AbstractContextManager[Span]:
        return NOOP_SPAN

    def traceparent(self, fallback: str | None) -> str | None:
        return well_formed_traceparent(fallback)

    def shutdown(self) -> None:
        return None


NO_TRACER: Tracer = NoTracer()


class TracingUnavailable(Exception):
    """OTEL_EXPORTER_OTLP_ENDPOINT is set but the `tracing` extra is not installed."""


def tracing_installed() -> bool:
    """Whether the `tracing` extra (OpenTelemetry SDK + OTLP/HTTP exporter) can be imported."""
    from importlib.util import find_spec

    try:
        return all(
            find_spec(name) is not None
            for name in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")
        )
    except ModuleNotFoundError:
        return False
