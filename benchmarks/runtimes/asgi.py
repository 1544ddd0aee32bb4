"""ASGI binding, served by granian's ASGI interface; used by the runtime benchmark only.

It translates the ASGI request into `HttpRequest` and the `HttpResponse` back, like the RSGI
binding; routing, decoding and error mapping stay in `RestApi`. Each worker builds its own pool
in the ASGI lifespan start-up (granian runs the lifespan in every worker, after the fork).

    python -m benchmarks.runtimes.asgi   # PORT, BIND, HTTP_WORKERS, DATABASE_URL... as for `serve`
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from service.config import Settings, load_settings
from service.entrypoints.http import HttpWorker, serve_granian
from service.http.api import HttpRequest, RestApi
from service.http.body import BODY_METHODS, UNDECODABLE, read_body
from service.observability.logging import role_var

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AsgiHeaders:
    """The request headers of an ASGI scope, read like granian's RSGI headers.

    The first value of a repeated header counts; a value that is not visible ASCII reads as
    U+FFFD (granian's RSGI headers cannot decode it either), never as an absent header.
    """

    __slots__ = ("_headers",)

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        headers: dict[str, bytes] = {}
        for name, value in raw:
            headers.setdefault(name.decode("latin-1").lower(), value)
        self._headers = headers

    def get(self, key: str, default: Any = None) -> Any:
        value = self._headers.get(key)
        if value is None:
            return default
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return UNDECODABLE


async def _body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: what arrived is all there is
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


class AsgiApp:
    def __init__(self) -> None:
        self.api: RestApi | None = None
        self._worker = HttpWorker()

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.api = self._worker.start(asyncio.get_running_loop())
                except Exception as exc:  # reported to granian, which stops the worker
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._worker.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Message, receive: Receive, send: Send) -> None:
        api = self.api
        assert api is not None, "the ASGI lifespan start-up has not run"
        method: str = scope["method"]
        headers = AsgiHeaders(scope["headers"])
        body = b""
        too_large = False
        if method in BODY_METHODS:
            body, too_large = await read_body(_body_chunks(receive), headers.get("content-length"), api.max_body_bytes)
        response = await api.handle(
            HttpRequest(method, scope["path"], scope["query_string"].decode("latin-1"), headers, body, too_large)
        )
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers],
            }
        )
        await send({"type": "http.response.body", "body": response.body})


def create_app() -> AsgiApp:
    """granian's factory, called in each worker's main thread, whose context request tasks copy."""
    role_var.set("http")  # the role of the worker's log lines (the lifespan runs in a task of its own)
    return AsgiApp()


def serve(settings: Settings) -> None:
    """granian with its ASGI interface and the options the http role gives RSGI."""
    serve_granian(settings, "benchmarks.runtimes.asgi:create_app", interface="asgi", factory=True)


if __name__ == "__main__":
    serve(load_settings())
