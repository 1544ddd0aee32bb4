"""The grpc role: one grpc.aio server process on uvloop, sharing GRPC_PORT with its siblings."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from service.app import Resources, build_service
from service.config import Settings
from service.grpc.decoding import ParsingServer
from service.grpc.pb import orders_pb2, orders_pb2_grpc
from service.grpc.servicer import OrderServicer
from service.observability.metrics import PoolGauges, publish_periodically

log = logging.getLogger(__name__)

SERVICE_NAME = orders_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
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


async def watch_database(resources: Resources, health_servicer: Health) -> None:
    """SERVING only while PostgreSQL answers."""
    serving: bool | None = None
    while True:
        try:
            await asyncio.wait_for(resources.db.ping(), HEALTH_INTERVAL * 2)
            now_serving = True
        except Exception:
            now_serving = False
        if now_serving != serving:
            status = (
                health_pb2.HealthCheckResponse.SERVING if now_serving else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in HEALTH_NAMES:
                await health_servicer.set(name, status)
            if serving is not None or not now_serving:
                log.warning("health changed", extra={"serving": now_serving})
            serving = now_serving
        await asyncio.sleep(HEALTH_INTERVAL)


async def run(settings: Settings) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    resources = Resources(settings, role="grpc")
    server = grpc.aio.server(options=SERVER_OPTIONS)
    registry = ParsingServer(server)  # request bytes that do not parse answer INVALID_ARGUMENT
    orders_pb2_grpc.add_OrderServiceServicer_to_server(  # type: ignore[no-untyped-call]
        OrderServicer(build_service(settings, resources.db, resources.tracer), tracer=resources.tracer), registry
    )
    health_servicer = Health()
    for name in HEALTH_NAMES:  # until the first database ping answers
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registry)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(  # what enable_server_reflection does on grpc.aio
        reflection.aio.ReflectionServicer(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        ),
        registry,
    )
    address = f"{settings.bind}:{settings.grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        log.error(
            "cannot bind the gRPC port: is the address valid and the port free (or held by another gRPC server)?",
            extra={"address": address},
        )
        await resources.aclose()
        return 1
    await server.start()
    log.info("gRPC listening", extra={"address": address, "port": port})
    publish_periodically(loop, PoolGauges("grpc", resources.db.stats))
    watcher = asyncio.create_task(watch_database(resources, health_servicer))
    await stop.wait()
    log.info("gRPC shutting down", extra={"grace_s": settings.shutdown_timeout})
    watcher.cancel()
    await health_servicer.shut_down()  # NOT_SERVING first; Watch streams send it and end
    await server.stop(grace=settings.shutdown_timeout)  # no new calls; in-flight ones finish
    await resources.aclose()
    log.info("gRPC stopped")
    return 0


def serve(settings: Settings) -> None:
    code = uvloop.run(run(settings))
    if code:
        raise SystemExit(code)
