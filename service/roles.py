"""The body of each role process the supervisor starts."""

from __future__ import annotations

import logging

from service.config import Settings

log = logging.getLogger(__name__)


def run_http(settings: Settings) -> None:
    serve_granian(settings, "service.http.rsgi:app", interface="rsgi")


def serve_granian(settings: Settings, target: str, interface: str, factory: bool = False) -> None:
    """granian with the options of the http role; `interface` is "rsgi" (production) or "asgi"."""
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    # granian's own lines (worker spawn/stop) go through the service's JSON handler too.
    json_logging = {
        "handlers": {"json": {"()": "service.observability.logging.JsonLineHandler"}},
        "loggers": {"_granian": {"handlers": ["json"], "propagate": False}},
    }

    server = Server(
        target,
        factory=factory,
        address=settings.bind,
        port=settings.port,
        interface=Interfaces(interface),
        workers=settings.http_workers,
        loop=Loops.uvloop,
        backlog=2048,
        respawn_failed_workers=True,
        workers_kill_timeout=max(1, int(settings.shutdown_timeout)),
        log_enabled=True,
        log_level=LogLevels(settings.log_level.lower()),
        log_dictconfig=json_logging,
        log_access=False,
    )
    server.serve()


def run_grpc(settings: Settings) -> None:
    from service.grpc.server import serve

    serve(settings)


def run_worker(settings: Settings) -> None:
    from service.events.worker import serve

    serve(settings)


ROLE_RUNNERS = {"http": run_http, "grpc": run_grpc, "worker": run_worker}
