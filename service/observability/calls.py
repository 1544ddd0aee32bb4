"""The envelope every REST request and gRPC call runs in, the same for both transports.

In: the request id (the client's when acceptable, else a new one) becomes the current one
(`request_id_var`), and a change's `RequestContext` carries it and the trace to continue. Around:
a SERVER span, only when tracing is on (off, a call pays one flag check and nothing else). Out:
one metric through the injected `CallMetrics` and one access line, with the same fields for both
transports: `method` (HTTP method / RPC name), `path` (URL path / "/package.Service/Method"),
`status` (HTTP status / numeric gRPC status) and `code` (its name: "NOT_FOUND" in both).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from contextvars import Token
from http import HTTPStatus
from typing import Protocol

import uuid_utils

from service.access import RequestContext
from service.domain import Principal
from service.observability.logging import log_access, request_id_var
from service.observability.tracing import Attributes, Span, Tracer


class CallMetrics(Protocol):
    """Where each transport records its calls (labels: route templates and names, never raw ids)."""

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None: ...

    def observe_grpc(self, method: str, code: str, seconds: float) -> None: ...


class NoMetrics:
    """Records nothing and exposes nothing (tests, benchmarks, embedding)."""

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        return None

    def observe_grpc(self, method: str, code: str, seconds: float) -> None:
        return None

    async def render(self) -> tuple[str, bytes]:
        return "text/plain; version=0.0.4", b""


NO_METRICS = NoMetrics()

_HTTP_CODES = {status.value: status.name for status in HTTPStatus}


def accept_request_id(raw: str | None) -> str:
    """The client's request id when it is 1..128 visible ASCII characters, else a new one."""
    if raw is not None and 1 <= len(raw) <= 128 and all(33 <= ord(c) <= 126 for c in raw):
        return raw
    return str(uuid_utils.uuid4())


def enter(raw_request_id: str | None) -> tuple[str, Token[str | None]]:
    """The call's request id, now the current one; pass the token to `leave` when the call ends."""
    request_id = accept_request_id(raw_request_id)
    return request_id, request_id_var.set(request_id)


def leave(token: Token[str | None]) -> None:
    request_id_var.reset(token)


def end_server_span(span: Span, request_id: str, status_key: str, status: int, failure: str | None) -> None:
    """The outcome attributes of a SERVER span; `failure` marks it failed (a server-side error)."""
    span.set_attribute(status_key, status)
    span.set_attribute("orders.request_id", request_id)
    if failure is not None:
        span.set_error(failure)


class CallEnvelope:
    """One transport's tracer and metrics, and what each of its calls does with them."""

    __slots__ = ("_metrics", "_tracer", "traced")

    def __init__(self, metrics: CallMetrics, tracer: Tracer) -> None:
        self._metrics = metrics
        self._tracer = tracer
        self.traced = tracer.enabled

    def server_span(self, name: str, traceparent: str | None, attributes: Attributes) -> AbstractContextManager[Span]:
        """The call's SERVER span, continuing the incoming traceparent; only when `traced`."""
        return self._tracer.span(name, "server", parent=traceparent, attributes=attributes)

    def context(self, request_id: str, traceparent: str | None, principal: Principal) -> RequestContext:
        """Who calls and where a change comes from: the request id, and the trace its event continues
        (the call's span when tracing, else the incoming traceparent when it is well formed)."""
        return RequestContext(
            principal=principal, request_id=request_id, traceparent=self._tracer.traceparent(traceparent)
        )

    def http_done(self, route: str, method: str, path: str, status: int, started: float) -> None:
        """Metric and access line of a REST request (`route`: the template that labels the metric)."""
        elapsed = time.perf_counter() - started
        self._metrics.observe_http(route, method, status, elapsed)
        log_access(method, path, status, _HTTP_CODES.get(status) or str(status), elapsed)

    def grpc_done(self, method: str, path: str, status: int, code: str, started: float) -> None:
        """Metric and access line of a gRPC call (`status`: the numeric code, `code`: its name)."""
        elapsed = time.perf_counter() - started
        self._metrics.observe_grpc(method, code, elapsed)
        log_access(method, path, status, code, elapsed)
