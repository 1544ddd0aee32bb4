"""The grpc role: one grpc.aio server process on uvloop, sharing GRPC_PORT with its siblings."""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop

from service.app import Resources, build_grpc_server
from service.config import Settings
from service.observability.metrics import PoolGauges, publish_periodically

# The name these lines have always been logged under (the role's code lived in service/grpc/server.py).
log = logging.getLogger("service.grpc.server")


async def run(settings: Settings) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    resources = Resources(settings, role="grpc")
    server = build_grpc_server(settings, resources)
    address = f"{settings.bind}:{settings.grpc_port}"
    port = server.add_port(
        address,
        cert_file=settings.tls_cert_file,
        key_file=settings.tls_key_file,
        client_ca_file=settings.tls_client_ca_file,
    )
    if port == 0:
        log.error(
            "cannot bind the gRPC port: is the address valid and the port free (or held by another gRPC server)?",
            extra={"address": address},
        )
        await resources.aclose()
        return 1
    await server.start()
    log.info("gRPC listening", extra={"address": address, "port": port, "tls": settings.tls_cert_file is not None})
    key_refresh = asyncio.create_task(resources.refresh_keys(), name="jwks-refresh")
    publish_periodically(loop, PoolGauges("grpc", resources.db.stats))
    monitor = asyncio.create_task(resources.dependencies.run())  # what the health watcher reads
    watcher = asyncio.create_task(server.watch_health())
    await stop.wait()
    log.info("gRPC shutting down", extra={"grace_s": settings.shutdown_timeout})
    watcher.cancel()
    resources.changes.close()  # WatchOrders streams end (OK) after what they hold, so the grace is not spent on them
    key_refresh.cancel()
    monitor.cancel()
    await server.stop(grace=settings.shutdown_timeout)
    await resources.aclose()
    log.info("gRPC stopped")
    return 0


def serve(settings: Settings) -> None:
    code = uvloop.run(run(settings))
    if code:
        raise SystemExit(code)
