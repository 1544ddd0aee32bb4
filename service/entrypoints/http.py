"""The http role: granian serving the RSGI binding, with one HttpWorker in each granian worker.

`app` is granian's target (`service.entrypoints.http:app`); `run_http` starts granian with it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from service.app import Resources, build_rest_api
from service.config import Settings, load_settings
from service.http.api import RestApi
from service.http.rsgi import RsgiApp
from service.observability.logging import configure_logging
from service.observability.metrics import PoolGauges, publish_periodically

TARGET = "service.entrypoints.http:app"


class HttpWorker:
    """The REST API of one worker process: settings, logging, pool, metrics; created after the fork."""

    def __init__(self) -> None:
        self.api: RestApi | None = None
        self._resources: Resources | None = None
        self._key_refresh: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> RestApi:
        settings = load_settings()
        configure_logging(settings.log_level, role="http")
        self._resources = Resources(settings, role="http")
        self.api = build_rest_api(settings, self._resources)
        self._key_refresh = loop.create_task(self._resources.refresh_keys(), name="jwks-refresh")
        publish_periodically(loop, PoolGauges("http", self._resources.db.stats))
        end_on_shutdown(loop, self._resources.changes.close)
        self._monitor = loop.create_task(self._resources.dependencies.run())  # what /ready reads
        return self.api

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            self._monitor = None
        if self._key_refresh is not None:
            self._key_refresh.cancel()
            self._key_refresh = None
        if self._resources is not None:
            self._resources.close_sync()
            self._resources = None


def end_on_shutdown(loop: asyncio.AbstractEventLoop, end: Callable[[], None]) -> None:
    """Call `end` when the worker is told to stop (SIGTERM/SIGINT), so that watch streams end then.

    granian drains in-flight responses before its worker exits, and an SSE stream never ends on its
    own: it would hold the worker until granian's kill timeout. granian's own handler (installed
    through the loop before the app starts) still runs: it is chained, not replaced.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def handler(number: int, frame: FrameType | None, previous: object = previous) -> None:
            loop.call_soon_threadsafe(end)
            if callable(previous):
                previous(number, frame)

        signal.signal(signum, handler)


app = RsgiApp(HttpWorker())


def run_http(settings: Settings) -> None:
    serve_granian(settings, TARGET, interface="rsgi")


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
        backpressure=settings.http_backpressure,
        respawn_failed_workers=True,
        workers_kill_timeout=max(1, int(settings.shutdown_timeout)),
        log_enabled=True,
        log_level=LogLevels(settings.log_level.lower()),
        log_dictconfig=json_logging,
        log_access=False,
        # TLS only when configured (HTTP/2 by ALPN, and HTTP/1.1); a client CA requires client certificates.
        ssl_cert=Path(settings.tls_cert_file) if settings.tls_cert_file else None,
        ssl_key=Path(settings.tls_key_file) if settings.tls_key_file else None,
        ssl_ca=Path(settings.tls_client_ca_file) if settings.tls_client_ca_file else None,
        ssl_client_verify=settings.tls_client_ca_file is not None,
    )
    server.serve()
