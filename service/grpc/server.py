"""The gRPC transport: server options, the health servicer and the configured grpc.aio server.

What the server serves (the OrderServicer) and what decides health (a readiness check) are given
to it; the grpc role's process (service/entrypoints/grpc.py) runs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from service.grpc.decoding import ParsingServer
from service.grpc.pb import orders_pb2, orders_pb2_grpc
from service.grpc.servicer import OrderServicer

log = logging.getLogger(__name__)

SERVICE_NAME = orders_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name
# The largest valid request (an UpdateOrderRequest with a 255-character product of 4-byte UTF-8
# characters) is about 1.1 KiB: 4 KiB leaves room and refuses anything bigger (RESOURCE_EXHAUSTED)
# before it is buffered. Responses (a page of up to 1,000 orders) may be larger.
MAX_RECEIVE_BYTES = 4 * 1024
MAX_SEND_BYTES = 4 * 1024 * 1024
# Connections are recycled (with a grace period for calls in flight) so that clients rebalance
# over new pods, and idle ones are closed instead of holding server resources forever.
MAX_CONNECTION_AGE_MS = 30 * 60 * 1000
MAX_CONNECTION_AGE_GRACE_MS = 30 * 1000
MAX_CONNECTION_IDLE_MS = 5 * 60 * 1000
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    ("grpc.max_send_message_length", MAX_SEND_BYTES),
    ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
    ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
    ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
    ("grpc.max_concurrent_streams", 256),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.so_reuseport", 1),
]
HEALTH_INTERVAL = 1.0
HEALTH_NAMES = ("", SERVICE_NAME)


class Health(health.aio.HealthServicer):  # type: ignore[misc]
    """The standard aio health servicer, plus: Watch streams end (after NOT_SERVING) on shutdown.

    A Watch stream never ends on its own, so without this one open watcher would hold the
    server's graceful stop for the whole grace period.
    """

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._generation = 0
        self._closing = False

    async def set(self, service: str, status: int) -> None:
        await super().set(service, status)
        if not self._closing:
            self._statuses[service] = status
            await self._notify()

    async def shut_down(self) -> None:
        """NOT_SERVING for every service from now on; open Watch streams send it and end."""
        await self.enter_graceful_shutdown()
        self._closing = True
        for service in self._statuses:
            self._statuses[service] = health_pb2.HealthCheckResponse.NOT_SERVING
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        last: int | None = None
        while True:
            seen = self._generation
            status = self._statuses.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self._closing:
                return
            async with self._changed:
                while self._generation == seen:
                    await self._changed.wait()


class GrpcServer:
    """A grpc.aio server with the order service, health and (optionally) reflection registered.

    Health is SERVING only while `check` (a readiness check) succeeds, polled by `watch_health`.
    How many order-service calls may be in flight is the servicer's limit (health is never shed).
    """

    def __init__(
        self,
        servicer: OrderServicer,
        check: Callable[[], Awaitable[None]],
        *,
        reflection_enabled: bool = True,
    ) -> None:
        self._check = check
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        # Request bytes that do not parse answer INVALID_ARGUMENT, but an unauthenticated caller
        # of the orders service is refused as such first.
        registry = ParsingServer(self.server, guards={SERVICE_NAME: servicer.refuse_unauthenticated})
        orders_pb2_grpc.add_OrderServiceServicer_to_server(servicer, registry)  # type: ignore[no-untyped-call]
        self.health = Health()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registry)
        if reflection_enabled:  # what enable_server_reflection does, on grpc.aio
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
                reflection.aio.ReflectionServicer(
                    (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
                ),
                registry,
            )

    def add_port(
        self,
        address: str,
        *,
        cert_file: str | None = None,
        key_file: str | None = None,
        client_ca_file: str | None = None,
    ) -> int:
        """The port bound at `address`, or 0 when it cannot be bound. With a certificate and key it
        serves TLS only; with a client CA too, only clients with a certificate signed by it (mTLS)."""
        try:
            if cert_file and key_file:
                credentials = grpc.ssl_server_credentials(
                    [(Path(key_file).read_bytes(), Path(cert_file).read_bytes())],
                    root_certificates=Path(client_ca_file).read_bytes() if client_ca_file else None,
                    require_client_auth=client_ca_file is not None,
                )
                port: int = self.server.add_secure_port(address, credentials)
            else:
                port = self.server.add_insecure_port(address)
        except RuntimeError:
            return 0
        return port

    async def start(self) -> None:
        for name in HEALTH_NAMES:  # until the first check answers
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()

    async def watch_health(self) -> None:
        """SERVING only while the check succeeds; runs until cancelled."""
        serving: bool | None = None
        while True:
            try:
                await asyncio.wait_for(self._check(), HEALTH_INTERVAL * 2)
                now_serving = True
            except Exception:
                now_serving = False
            if now_serving != serving:
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if now_serving
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in HEALTH_NAMES:
                    await self.health.set(name, status)
                if serving is not None or not now_serving:
                    log.warning("health changed", extra={"serving": now_serving})
                serving = now_serving
            await asyncio.sleep(HEALTH_INTERVAL)

    async def stop(self, grace: float) -> None:
        await self.health.shut_down()  # NOT_SERVING first; Watch streams send it and end
        await self.server.stop(grace=grace)  # no new calls; in-flight ones finish
