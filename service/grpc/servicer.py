"""OrderService over gRPC: translate protobuf to service calls and back. No business rules here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from service.access import RequestContext
from service.domain import ANONYMOUS, FieldViolation, ValidationFailed
from service.grpc.convert import ChangeMessages, order_to_pb, status_from_pb
from service.grpc.pb import orders_pb2, orders_pb2_grpc
from service.grpc.status import TooManyCalls, status_for
from service.grpc.watch_writes import BoundedWrites
from service.observability.calls import NO_METRICS, CallEnvelope, CallMetrics, end_server_span, enter, leave
from service.observability.tracing import NO_TRACER, NOOP_SPAN, Span, Tracer
from service.orders import OrderService
from service.ports import Authenticator
from service.ratelimit import RateLimiter, client_key

Reply = TypeVar("Reply")
Work = Callable[[RequestContext, dict[str, str]], Awaitable[Reply]]
_DESCRIPTOR = orders_pb2.DESCRIPTOR.services_by_name["OrderService"]
SERVICE = _DESCRIPTOR.full_name
# What the access line's `path` and `status` carry: the call's HTTP/2 :path and numeric grpc-status.
_PATHS = {method.name: f"/{SERVICE}/{method.name}" for method in _DESCRIPTOR.methods}
_NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}
# The calls RATE_LIMIT_RPS counts: those of REST's /orders routes (watches are not counted there either).
_LIMITED = frozenset(name for name in _PATHS if name != "WatchOrders")


def peer_address(peer: str) -> str:
    """The client's address in a grpc peer string ("ipv4:10.0.0.1:5678", "ipv6:[::1]:5678"), without
    its port: the rate limit's key while there is no authentication, as REST's client address."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


def expected_version(value: int) -> int | None:
    """0 = not checked; a negative number is malformed (like a bad If-Match over REST)."""
    if value < 0:
        raise ValidationFailed([FieldViolation("expected_version", "must be 0 (not checked) or a version >= 1")])
    return value or None


# How long a watch waits for changes before looking again (HTTP/2 keepalive covers idle streams).
WATCH_POLL_SECONDS = 30.0

# Codes that mean the server failed (OpenTelemetry's gRPC conventions); the others are the client's.
_SERVER_ERRORS = frozenset(("UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"))


class OrderServicer(orders_pb2_grpc.OrderServiceServicer):
    def __init__(
        self,
        service: OrderService,
        *,
        tracer: Tracer = NO_TRACER,
        metrics: CallMetrics = NO_METRICS,
        authenticator: Authenticator | None = None,
        rate_limiter: RateLimiter | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        """`authenticator` None (AUTH_MODE=none): every caller is the anonymous principal.
        `rate_limiter`: RATE_LIMIT_RPS per owner (per client address without authentication).
        `max_in_flight`: beyond this many calls of this service in flight (open watches included),
        a new call answers RESOURCE_EXHAUSTED at once. Counted here rather than by grpc.aio's
        `maximum_concurrent_rpcs`, which counts health checks too: a loaded process would then fail
        its own health probe and be taken out of service exactly when it is busiest."""
        self._service = service
        self._max_in_flight = max_in_flight
        self.in_flight = 0
        self._limiter = rate_limiter
        self._calls = CallEnvelope(metrics, tracer)
        self._changes = ChangeMessages()
        self._auth = authenticator

    async def refuse_unauthenticated(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Abort the call (UNAUTHENTICATED) when its caller does not authenticate; else return."""
        if self._auth is None:
            return
        metadata = {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
        try:
            self._auth.authenticate(metadata.get("authorization"))
        except Exception as exc:
            await context.abort_with_status(status_for(exc, metadata.get("x-request-id") or ""))

    async def _call(self, method: str, context: grpc.aio.ServicerContext[Any, Any], work: Work[Reply]) -> Reply:
        """Request id in and out, one access line and metric per call, every failure as a status."""
        started = time.perf_counter()
        metadata = {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
        if not self._calls.traced:
            return await self._run(method, context, work, metadata, started, NOOP_SPAN)
        with self._calls.server_span(
            f"{SERVICE}/{method}",
            metadata.get("traceparent"),
            {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method},
        ) as span:
            return await self._run(method, context, work, metadata, started, span)

    async def _run(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        work: Work[Reply],
        metadata: dict[str, str],
        started: float,
        span: Span,
    ) -> Reply:
        request_id, token = enter(metadata.get("x-request-id"))
        code = "OK"
        self.in_flight += 1
        try:
            await context.send_initial_metadata((("x-request-id", request_id),))
            try:
                if self._max_in_flight is not None and self.in_flight > self._max_in_flight:
                    raise TooManyCalls(self._max_in_flight)
                principal = ANONYMOUS if self._auth is None else self._auth.authenticate(metadata.get("authorization"))
                if self._limiter is not None and method in _LIMITED:  # RateLimited: RESOURCE_EXHAUSTED
                    owner = principal.owner if self._auth is not None else None
                    self._limiter.admit(client_key(owner, peer_address(context.peer())))
                ctx = self._calls.context(request_id, metadata.get("traceparent"), principal)
                return await work(ctx, metadata)
            except asyncio.CancelledError:  # the client went away or its deadline passed
                code = "CANCELLED"
                raise
            except Exception as exc:
                status = status_for(exc, request_id)
                code = status.code.name
                await context.abort_with_status(status)
                raise  # abort_with_status always raises; this keeps type checkers honest
        finally:
            self.in_flight -= 1
            if span is not NOOP_SPAN:
                failure = code if code in _SERVER_ERRORS else None
                end_server_span(span, request_id, "rpc.grpc.status_code", _NUMBERS[code], failure)
            self._calls.grpc_done(method, _PATHS[method], _NUMBERS[code], code, started)
            leave(token)

    async def CreateOrder(
        self, request: orders_pb2.CreateOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> orders_pb2.CreateOrderResponse:
        async def work(ctx: RequestContext, metadata: dict[str, str]) -> orders_pb2.CreateOrderResponse:
            result = await self._service.create(
                request.product, request.quantity, idempotency_key=metadata.get("x-idempotency-key"), ctx=ctx
            )
            if result.replayed:
                context.set_trailing_metadata((("idempotent-replayed", "true"),))
            return orders_pb2.CreateOrderResponse(order=order_to_pb(result.order))

        return await self._call("CreateOrder", context, work)

    async def GetOrder(
        self, request: orders_pb2.GetOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> orders_pb2.GetOrderResponse:
        async def work(ctx: RequestContext, metadata: dict[str, str]) -> orders_pb2.GetOrderResponse:
            return orders_pb2.GetOrderResponse(order=order_to_pb(await self._service.get(request.id, ctx=ctx)))

        return await self._call("GetOrder", context, work)

    async def ListOrders(
        self, request: orders_pb2.ListOrdersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> orders_pb2.ListOrdersResponse:
        async def work(ctx: RequestContext, metadata: dict[str, str]) -> orders_pb2.ListOrdersResponse:
            page = await self._service.list(
                limit=request.page_size or None,
                cursor=request.page_token or None,
                status=status_from_pb(request.status),
                ctx=ctx,
            )
            return orders_pb2.ListOrdersResponse(
                orders=[order_to_pb(order) for order in page.orders], next_page_token=page.next_cursor or ""
            )

        return await self._call("ListOrders", context, work)

    async def UpdateOrder(
        self, request: orders_pb2.UpdateOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> orders_pb2.UpdateOrderResponse:
        async def work(ctx: RequestContext, metadata: dict[str, str]) -> orders_pb2.UpdateOrderResponse:
            order = await self._service.update(
                request.id,
                product=request.product or None,
                quantity=request.quantity or None,
                status=status_from_pb(request.status),
                expected_version=expected_version(request.expected_version),
                ctx=ctx,
            )
            return orders_pb2.UpdateOrderResponse(order=order_to_pb(order))

        return await self._call("UpdateOrder", context, work)

    async def DeleteOrder(
        self, request: orders_pb2.DeleteOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> orders_pb2.DeleteOrderResponse:
        async def work(ctx: RequestContext, metadata: dict[str, str]) -> orders_pb2.DeleteOrderResponse:
            await self._service.delete(request.id, expected_version=expected_version(request.expected_version), ctx=ctx)
            return orders_pb2.DeleteOrderResponse()

        return await self._call("DeleteOrder", context, work)

    async def WatchOrders(
        self, request: orders_pb2.WatchOrdersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Server streaming by `context.write`; the call (and its access line) ends with the stream,
        or when its client stops reading (see watch_writes)."""
        writes = BoundedWrites()

        async def work(ctx: RequestContext, metadata: dict[str, str]) -> None:
            subscription = await self._service.watch(list(request.order_ids), request.after or None, ctx=ctx)
            try:
                while True:
                    try:
                        batch = await subscription.changes(WATCH_POLL_SECONDS)
                    except StopAsyncIteration:  # shutting down: end with OK
                        return
                    await writes.write(context, map(self._changes.message, batch), subscription)
            finally:
                subscription.close()

        try:
            await self._call("WatchOrders", context, work)
        finally:
            writes.done()
