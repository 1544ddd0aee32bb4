"""Interface-independent REST handling: route, decode, call the service, encode, map errors.

Server bindings (RSGI in production; ASGI and robyn for benchmarks) only translate their
request into `HttpRequest` and `HttpResponse` back; no rule or error mapping lives in them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote

import msgspec
import uuid_utils

from service.domain import Order
from service.http.problems import PROBLEM_CONTENT_TYPE, HttpError, bad_request, decode_error, problem_for
from service.http.schemas import CreateOrderBody, Health, Readiness, UpdateOrderBody
from service.observability.logging import request_id_var
from service.orders import OrderService, RequestContext

access_log = logging.getLogger("orders.access")

JSON = "application/json"
_encode = msgspec.json.Encoder().encode
_decode_create = msgspec.json.Decoder(CreateOrderBody).decode
_decode_update = msgspec.json.Decoder(UpdateOrderBody).decode
_HEALTH_BODY = _encode(Health(status="ok"))


class Headers(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...


class HttpRequest(msgspec.Struct):
    method: str
    path: str
    query_string: str
    headers: Headers | Mapping[str, str]
    body: bytes = b""
    body_too_large: bool = False


class HttpResponse(msgspec.Struct):
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


ReadinessCheck = Callable[[], Awaitable[None]]
JsonSource = Callable[[], Awaitable[bytes]]


def valid_request_id(raw: str | None) -> bool:
    return raw is not None and 1 <= len(raw) <= 128 and all(33 <= ord(c) <= 126 for c in raw)


def parse_if_match(raw: str | None) -> int | None:
    """The version an If-Match header demands; None when absent or `*`."""
    if raw is None:
        return None
    value = raw.strip()
    if value == "*":
        return None
    if value.startswith("W/"):
        value = value[2:]
    if len(value) >= 3 and value[0] == value[-1] == '"' and value[1:-1].isdigit() and len(value) < 22:
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
        readiness_checks: Mapping[str, ReadinessCheck],
        json_endpoints: Mapping[str, JsonSource],
        openapi_document: bytes,
        max_body_bytes: int,
        readiness_timeout: float = 2.0,
    ) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes
        self._readiness_checks = dict(readiness_checks)
        self._json_endpoints = dict(json_endpoints)
        self._openapi = openapi_document
        self._readiness_timeout = readiness_timeout

    async def handle(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        incoming_id = request.headers.get("x-request-id")
        request_id = str(incoming_id) if valid_request_id(incoming_id) else str(uuid_utils.uuid4())
        token = request_id_var.set(request_id)
        try:
            try:
                response = await self._dispatch(request, request_id)
            except Exception as exc:  # every failure becomes a problem response
                status, headers, body = problem_for(exc, request_id)
                response = HttpResponse(status, [("content-type", PROBLEM_CONTENT_TYPE), *headers], body)
            response.headers.append(("x-request-id", request_id))
            access_log.info(
                "request",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )
            return response
        finally:
            request_id_var.reset(token)

    async def _dispatch(self, request: HttpRequest, request_id: str) -> HttpResponse:
        path = request.path
        method = request.method
        if path == "/orders":
            if method == "GET":
                return await self._list(request)
            if method == "POST":
                return await self._create(request, request_id)
            raise _method_not_allowed("GET, POST")
        if path.startswith("/orders/") and path.count("/") == 2 and len(path) > 8:
            order_id = path[8:]
            if method == "GET":
                return self._order_response(200, await self.service.get(order_id))
            if method == "PUT":
                return await self._update(request, order_id, request_id)
            if method == "DELETE":
                return await self._delete(request, order_id, request_id)
            raise _method_not_allowed("GET, PUT, DELETE")
        if path == "/health":
            _only_get(method)
            return HttpResponse(200, [("content-type", JSON)], _HEALTH_BODY)
        if path == "/ready":
            _only_get(method)
            return await self._ready()
        if path == "/openapi.json":
            _only_get(method)
            return HttpResponse(200, [("content-type", JSON)], self._openapi)
        source = self._json_endpoints.get(path)
        if source is not None:
            _only_get(method)
            return HttpResponse(200, [("content-type", JSON)], await source())
        raise HttpError(404, "not-found", "Not found", f"no route for {path}")

    def _body(self, request: HttpRequest) -> bytes:
        if request.body_too_large:
            raise HttpError(
                413,
                "body-too-large",
                "Request body too large",
                f"the body must be at most {self.max_body_bytes} bytes",
            )
        content_type = request.headers.get("content-type")
        if content_type:
            media = content_type.split(";", 1)[0].strip().lower()
            if media != JSON and not media.endswith("+json"):
                raise HttpError(
                    415,
                    "unsupported-media-type",
                    "Unsupported media type",
                    "the body must be application/json",
                )
        return request.body

    def _order_response(self, status: int, order: Order, extra: list[tuple[str, str]] | None = None) -> HttpResponse:
        headers = [("content-type", JSON), ("etag", _etag(order))]
        if extra:
            headers.extend(extra)
        return HttpResponse(status, headers, _encode(order))

    async def _create(self, request: HttpRequest, request_id: str) -> HttpResponse:
        body = self._body(request)
        try:
            command = _decode_create(body)
        except msgspec.DecodeError as exc:
            raise decode_error(exc) from None
        result = await self.service.create(
            command.product,
            command.quantity,
            idempotency_key=request.headers.get("idempotency-key"),
            ctx=RequestContext(request_id=request_id, traceparent=request.headers.get("traceparent")),
        )
        extra = [("location", f"/orders/{result.order.id}")]
        if result.replayed:
            extra.append(("idempotent-replayed", "true"))
        return self._order_response(201, result.order, extra)

    async def _list(self, request: HttpRequest) -> HttpResponse:
        params = dict(parse_qsl(request.query_string, keep_blank_values=True))
        limit = None
        raw_limit = params.get("limit")
        if raw_limit is not None:
            if not raw_limit.isdigit() or len(raw_limit) > 9:
                raise bad_request("limit", "must be an integer between 1 and 1000")
            limit = int(raw_limit)
        status = params.get("status") or None
        page = await self.service.list(limit=limit, cursor=params.get("cursor") or None, status=status)
        headers = [("content-type", JSON)]
        if page.next_cursor is not None:
            query = f"limit={limit or len(page.orders)}&cursor={quote(page.next_cursor)}"
            if status:
                query += f"&status={quote(status)}"
            headers.append(("link", f'</orders?{query}>; rel="next"'))
        return HttpResponse(200, headers, _encode(page.orders))

    async def _update(self, request: HttpRequest, order_id: str, request_id: str) -> HttpResponse:
        expected = parse_if_match(request.headers.get("if-match"))
        body = self._body(request)
        try:
            command = _decode_update(body)
        except msgspec.DecodeError as exc:
            raise decode_error(exc) from None
        order = await self.service.update(
            order_id,
            product=command.product,
            quantity=command.quantity,
            status=command.status.value if command.status is not None else None,
            expected_version=expected,
            ctx=RequestContext(request_id=request_id, traceparent=request.headers.get("traceparent")),
        )
        return self._order_response(200, order)

    async def _delete(self, request: HttpRequest, order_id: str, request_id: str) -> HttpResponse:
        expected = parse_if_match(request.headers.get("if-match"))
        await self.service.delete(
            order_id,
            expected_version=expected,
            ctx=RequestContext(request_id=request_id, traceparent=request.headers.get("traceparent")),
        )
        return HttpResponse(204, [])

    async def _ready(self) -> HttpResponse:
        checks: dict[str, str] = {}
        for name, check in self._readiness_checks.items():
            try:
                await asyncio.wait_for(check(), self._readiness_timeout)
                checks[name] = "ok"
            except Exception as exc:  # any failure of a dependency means "not ready"
                checks[name] = f"failed: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        body = _encode(Readiness(status="ok" if ok else "unavailable", checks=checks))
        headers = [("content-type", JSON)]
        if not ok:
            headers.append(("retry-after", "1"))
        return HttpResponse(200 if ok else 503, headers, body)


def _method_not_allowed(allow: str) -> HttpError:
    return HttpError(
        405,
        "method-not-allowed",
        "Method not allowed",
        f"allowed methods: {allow}",
        headers=[("allow", allow)],
    )


def _only_get(method: str) -> None:
    if method != "GET":
        raise _method_not_allowed("GET")
