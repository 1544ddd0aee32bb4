"""robyn binding; used by the runtime benchmark only.

Every method and path is routed to one catch-all handler that translates robyn's request into
`HttpRequest` and the `HttpResponse` back, so routing, decoding and error mapping stay in
`RestApi`, as with the RSGI binding. Each robyn process builds its own pool in robyn's start-up
handler (robyn forks its processes first).

    python -m benchmarks.runtimes.robyn_app   # PORT, BIND, HTTP_WORKERS, DATABASE_URL... as for `serve`

What robyn decides before this binding runs, and so differs from the production path: it reads the
whole body into memory before the handler runs (the 64 KiB limit is then applied to what it read),
drops request header values that are not visible ASCII (an undecodable If-Match reads as absent
instead of failing), answers the last value of a repeated header, and strips a trailing slash
from the path (`/orders/` is the list), and runs handlers outside the process's context (access
lines carry no role). It does not drain in-flight requests on SIGTERM (see benchmarks/runtimes/).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote

from robyn import Headers, Request, Response, Robyn
from robyn.argument_parser import Config

from service.config import Settings, load_settings
from service.entrypoints.http import HttpWorker
from service.http.api import HttpRequest
from service.http.body import BODY_METHODS, limit_read_body

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")


class RobynHeaders:
    """robyn's request headers behind the `get(key, default)` the REST core reads."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Headers) -> None:
        self._headers = headers

    def get(self, key: str, default: Any = None) -> Any:
        value = self._headers.get(key)
        return default if value is None else value


def _query_string(request: Request) -> str:
    params = request.query_params
    if params.empty():
        return ""
    # robyn splits the raw query on "&" and "=" without decoding; joining the pairs gives it back.
    return "&".join(f"{name}={value}" for name, value in params.multi_items())


def create_app(settings: Settings) -> Robyn:
    config = Config()
    config.processes = settings.http_workers
    config.workers = 1
    config.log_level = "WARN"
    config.disable_openapi = True
    app = Robyn(__file__, config=config)
    worker = HttpWorker()

    async def start_worker() -> None:
        worker.start(asyncio.get_running_loop())

    async def handle(request: Request) -> Response:
        api = worker.api
        assert api is not None, "robyn's start-up handler has not run"
        method = request.method
        body = b""
        too_large = False
        if method in BODY_METHODS:
            raw = request.body
            body, too_large = limit_read_body(raw.encode() if isinstance(raw, str) else raw, api.max_body_bytes)
        response = await api.handle(
            HttpRequest(
                method,
                unquote(request.url.path),  # granian's paths are percent-decoded; actix's are not
                _query_string(request),
                RobynHeaders(request.headers),
                body,
                too_large,
            )
        )
        grouped: dict[str, list[str]] = {}
        for name, value in response.headers:
            grouped.setdefault(name, []).append(value)
        return Response(response.status, Headers(grouped), response.body)

    app.startup_handler(start_worker)
    app.shutdown_handler(worker.close)
    for method in METHODS:
        app.add_route(method, "/", handle)
        app.add_route(method, "/*path", handle)
    return app


def serve(settings: Settings) -> None:
    create_app(settings).start(host=settings.bind, port=settings.port, _check_port=False)


if __name__ == "__main__":
    serve(load_settings())
