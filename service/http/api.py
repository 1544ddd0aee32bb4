"""Interface-independent REST handling: route, decode, call the service, encode, map errors.

Server bindings (RSGI in production; ASGI and robyn for benchmarks) only translate their
request into `HttpRequest` and `HttpResponse` back; no rule or error mapping lives in them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar
from urllib.parse import parse_qsl, quote

import msgspec

from service.access import RequestContext, authorize, require
from service.domain import ANONYMOUS, SCOPE_ADMIN, Order, Principal
from service.http.changes import ChangesRoute
from service.http.messages import HttpRequest as HttpRequest
from service.http.messages import HttpResponse as HttpResponse
from service.http.messages import StreamingResponse as StreamingResponse
from service.http.problems import (
    PROBLEM_CONTENT_TYPE,
    HttpError,
    bad_request,
    decode_error,
    problem_for,
    retry_after,
)
from service.http.schemas import CreateOrderBody, Health, Readiness, UpdateOrderBody
from service.observability.calls import NO_METRICS, CallEnvelope, CallMetrics, end_server_span, enter, leave
from service.observability.readiness import ALWAYS_READY
from service.observability.tracing import NO_TRACER, Tracer
from service.orders import OrderService
from service.ports import Authenticator
from service.ratelimit import RateLimiter, client_key

JSON = "application/json"
_encode = msgspec.json.Encoder().encode
_decode_create = msgspec.json.Decoder(CreateOrderBody).decode
_decode_update = msgspec.json.Decoder(UpdateOrderBody).decode
_Command = TypeVar("_Command")
_HEALTH_BODY = _encode(Health(status="ok"))
# Span names, metric labels and access lines take a known method, else "_OTHER" (OpenTelemetry
# semantic conventions): a client must not be able to mint span names or metric series.
_KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"))


class HttpMetrics(CallMetrics, Protocol):
    """What records the calls, and renders the exposition `GET /metrics` answers with."""

    async def render(self) -> tuple[str, bytes]:
        """Content type and body of the metrics exposition."""
        ...


class ReadinessState(Protocol):
    def snapshot(self) -> tuple[bool, dict[str, str]]:
        """Ready or not, and each dependency's last known state (refreshed in the background)."""
        ...


Handler = Callable[["HttpRequest", str, str, Principal], Awaitable["HttpResponse"]]
# Open without a token; every other route authenticates before anything is decoded.
OPEN_PATHS = frozenset(("/health", "/ready", "/openapi.json"))
JsonSource = Callable[[], Awaitable[bytes]]
RateLimitKey = Callable[["HttpRequest"], str]
# The API's own routes are rate limited; probes and metrics scrapes (from the node) are not.
_LIMITED_ROUTES = frozenset(("/orders", "/orders/{id}"))


def client_address(request: HttpRequest) -> str:
    """The rate limit's key while there is no authentication (with it, the caller's owner)."""
    return request.client


def parse_if_match(raw: str | None) -> int | None:
    """The version an If-Match header demands; None when absent or `*`."""
    if raw is None:
        return None
    value = raw.strip(" \t")
    if value == "*":
        return None
    if value.startswith("W/"):
        value = value[2:]
    digits = value[1:-1]
    if len(value) >= 3 and value[0] == value[-1] == '"' and digits.isascii() and digits.isdigit() and len(value) < 22:
        return int(value[1:-1])
    raise bad_request("If-Match", 'must be "*" or one entity tag such as "3"')


def _etag(order: Order) -> str:
    return f'"{order.version}"'


class RestApi:
    """The REST API of one process, over the service layer and readiness checks."""

    def __init__(
        self,
        service: OrderService,
        *,
        readiness: ReadinessState = ALWAYS_READY,
        json_endpoints: Mapping[str, JsonSource],
        openapi_document: bytes,
        max_body_bytes: int,
        metrics: HttpMetrics = NO_METRICS,
        tracer: Tracer = NO_TRACER,
        heartbeat_seconds: float = 15.0,
        watch_buffer: int = 1000,
        authenticator: Authenticator | None = None,
        rate_limiter: RateLimiter | None = None,
        rate_limit_key: RateLimitKey = client_address,
    ) -> None:
        """`authenticator` None (AUTH_MODE=none): every caller is the anonymous principal."""
        self.service = service
        self._auth = authenticator
        self._limiter = rate_limiter
        self._limit_key = rate_limit_key
        self.max_body_bytes = max_body_bytes
        self._readiness = readiness
        self._openapi = openapi_document
        self._metrics = metrics
        self._calls = CallEnvelope(metrics, tracer)
        changes = ChangesRoute(service, self._calls, heartbeat_seconds=heartbeat_seconds, buffer=watch_buffer)
        if self._calls.traced:  # off: `handle` stays the plain method, not a line of tracing on the path
            self.handle = self._handle_traced  # type: ignore[method-assign]
        self._order_routes: dict[str, Handler] = {"GET": self._get, "PUT": self._update, "DELETE": self._delete}
        self._static_routes: dict[str, dict[str, Handler]] = {
            "/orders": {"GET": self._list, "POST": self._create},
            "/orders/changes": {"GET": changes.watch},  # matched before /orders/{id}
            "/health": {"GET": self._health},
            "/ready": {"GET": self._ready},
            "/openapi.json": {"GET": self._openapi_document},
            "/metrics": {"GET": self._prometheus},
            **{path: {"GET": self._json_route(source)} for path, source in json_endpoints.items()},
        }
        self._admin_paths = frozenset(("/metrics", *json_endpoints))

    async def handle(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        request_id, token = enter(request.headers.get("x-request-id"))
        template, methods, param = self._match(request.path)
        limit_headers: list[tuple[str, str]] | None = None
        try:
            try:
                principal = ANONYMOUS
                if self._auth is not None and methods is not None and template not in OPEN_PATHS:
                    principal = self._auth.authenticate(request.headers.get("authorization"))
                    if template in self._admin_paths:
                        require(principal, SCOPE_ADMIN)
                if self._limiter is not None and template in _LIMITED_ROUTES:
                    owner = principal.owner if self._auth is not None else None
                    limit_headers = self._rate_limit(self._limiter, client_key(owner, self._limit_key(request)))
                handler = methods.get(request.method) if methods is not None else None
                if handler is not None:
                    response = await handler(request, request_id, param, principal)
                elif methods is None:
                    raise HttpError(404, "not-found", "Not found", f"no route for {request.path}")
                else:
                    allow = ", ".join(methods)
                    raise HttpError(
                        405,
                        "method-not-allowed",
                        "Method not allowed",
                        f"allowed methods: {allow}",
                        headers=[("allow", allow)],
                    )
            except Exception as exc:  # every failure becomes a problem response
                status, headers, body = problem_for(exc, request_id)
                response = HttpResponse(status, [("content-type", PROBLEM_CONTENT_TYPE), *headers], body)
            response.headers.append(("x-request-id", request_id))
            if limit_headers is not None:
                response.headers.extend(limit_headers)
            method = request.method if request.method in _KNOWN_METHODS else "_OTHER"
            self._calls.http_done(template, method, request.path, response.status, started)
            return response
        finally:
            leave(token)

    async def _handle_traced(self, request: HttpRequest) -> HttpResponse:
        """`handle` inside a SERVER span that continues the request's traceparent, if any."""
        template = self._match(request.path)[0]
        method = request.method if request.method in _KNOWN_METHODS else "_OTHER"
        with self._calls.server_span(
            method if template == "unmatched" else f"{method} {template}",
            request.headers.get("traceparent"),
            {"http.request.method": method, "http.route": template, "url.scheme": "http"},
        ) as span:
            response = await RestApi.handle(self, request)
            request_id = next(value for name, value in reversed(response.headers) if name == "x-request-id")
            failure = f"HTTP {response.status}" if response.status >= 500 else None
            end_server_span(span, request_id, "http.response.status_code", response.status, failure)
            return response

    def _rate_limit(self, limiter: RateLimiter, key: str) -> list[tuple[str, str]]:
        """The RateLimit headers of an allowed request (RateLimited, a 429, otherwise)."""
        decision = limiter.admit(key)
        return [("ratelimit-policy", limiter.policy), ("ratelimit", limiter.header(decision))]

    def _match(self, path: str) -> tuple[str, dict[str, Handler] | None, str]:
        """Route template (never a raw id: it labels metrics), its handlers by method, path param."""
        methods = self._static_routes.get(path)
        if methods is not None:
            return path, methods, ""
        if path.startswith("/orders/") and path.count("/") == 2 and len(path) > 8:
            return "/orders/{id}", self._order_routes, path[8:]
        return "unmatched", None, ""

    async def _get(self, request: HttpRequest, request_id: str, order_id: str, principal: Principal) -> HttpResponse:
        return self._order_response(200, await self.service.get(order_id, ctx=RequestContext(principal=principal)))

    async def _health(self, request: HttpRequest, request_id: str, param: str, principal: Principal) -> HttpResponse:
        return HttpResponse(200, [("content-type", JSON)], _HEALTH_BODY)

    async def _openapi_document(
        self, request: HttpRequest, request_id: str, param: str, principal: Principal
    ) -> HttpResponse:
        return HttpResponse(200, [("content-type", JSON)], self._openapi)

    async def _prometheus(
        self, request: HttpRequest, request_id: str, param: str, principal: Principal
    ) -> HttpResponse:
        content_type, body = await self._metrics.render()
        return HttpResponse(200, [("content-type", content_type)], body)

    def _json_route(self, source: JsonSource) -> Handler:
        async def handler(request: HttpRequest, request_id: str, param: str, principal: Principal) -> HttpResponse:
            return HttpResponse(200, [("content-type", JSON)], await source())

        return handler

    def _command(self, request: HttpRequest, decode: Callable[[bytes], _Command]) -> _Command:
        """The request's JSON body decoded (and type-checked) by `decode`."""
        if request.body_too_large:
            raise HttpError(
                413,
                "body-too-large",
                "Request body too large",
                f"the body must be at most {self.max_body_bytes} bytes",
            )
        # Required, not assumed: a form or text/plain POST needs no CORS preflight, so taking a body
        # without a type as JSON would let any web page create orders from a visitor's browser.
        content_type = request.headers.get("content-type")
        media = content_type.split(";", 1)[0].strip().lower() if content_type else ""
        if media != JSON and not media.endswith("+json"):
            raise HttpError(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                "the body must be application/json (send Content-Type: application/json)",
            )
        try:
            return decode(request.body)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec raises the latter for bad UTF-8
            raise decode_error(exc) from None

    def _order_response(self, status: int, order: Order, extra: list[tuple[str, str]] | None = None) -> HttpResponse:
        headers = [("content-type", JSON), ("etag", _etag(order))]
        if extra:
            headers.extend(extra)
        return HttpResponse(status, headers, _encode(order))

    async def _create(self, request: HttpRequest, request_id: str, param: str, principal: Principal) -> HttpResponse:
        authorize("create", principal)  # before the body is read
        command = self._command(request, _decode_create)
        result = await self.service.create(
            command.product,
            command.quantity,
            idempotency_key=request.headers.get("idempotency-key"),
            ctx=self._calls.context(request_id, request.headers.get("traceparent"), principal),
        )
        extra = [("location", f"/orders/{result.order.id}")]
        if result.replayed:
            extra.append(("idempotent-replayed", "true"))
        return self._order_response(201, result.order, extra)

    async def _list(self, request: HttpRequest, request_id: str, param: str, principal: Principal) -> HttpResponse:
        authorize("list", principal)  # before the query is parsed
        params = dict(parse_qsl(request.query_string, keep_blank_values=True))
        limit = None
        raw_limit = params.get("limit")
        if raw_limit is not None:
            if not (raw_limit.isascii() and raw_limit.isdigit()) or len(raw_limit) > 9:  # not "²" nor "٣"
                raise bad_request("limit", "must be an integer between 1 and 1000")
            limit = int(raw_limit)
        status = params.get("status")
        if status == "":  # given but empty: not one of the documented values (absent means "any")
            raise bad_request("status", "must be one of: pending, confirmed, cancelled")
        page = await self.service.list(
            limit=limit,
            cursor=params.get("cursor") or None,
            status=status,
            ctx=RequestContext(principal=principal),
        )
        headers = [("content-type", JSON)]
        if page.next_cursor is not None:
            query = f"limit={limit or len(page.orders)}&cursor={quote(page.next_cursor)}"
            if status:
                query += f"&status={quote(status)}"
            headers.append(("link", f'</orders?{query}>; rel="next"'))
        return HttpResponse(200, headers, _encode(page.orders))

    async def _update(self, request: HttpRequest, request_id: str, order_id: str, principal: Principal) -> HttpResponse:
        authorize("update", principal)  # before anything of the request is read
        expected = parse_if_match(request.headers.get("if-match"))
        command = self._command(request, _decode_update)
        order = await self.service.update(
            order_id,
            product=command.product,
            quantity=command.quantity,
            status=command.status.value if command.status is not None else None,
            expected_version=expected,
            ctx=self._calls.context(request_id, request.headers.get("traceparent"), principal),
        )
        return self._order_response(200, order)

    async def _delete(self, request: HttpRequest, request_id: str, order_id: str, principal: Principal) -> HttpResponse:
        authorize("delete", principal)  # before anything of the request is read
        expected = parse_if_match(request.headers.get("if-match"))
        await self.service.delete(
            order_id,
            expected_version=expected,
            ctx=self._calls.context(request_id, request.headers.get("traceparent"), principal),
        )
        return HttpResponse(204, [])

    async def _ready(self, request: HttpRequest, request_id: str, param: str, principal: Principal) -> HttpResponse:
        ok, checks = self._readiness.snapshot()
        body = _encode(Readiness(status="ok" if ok else "unavailable", checks=checks))
        headers = [("content-type", JSON)]
        if not ok:
            headers.append(("retry-after", retry_after()))
        return HttpResponse(200 if ok else 503, headers, body)
