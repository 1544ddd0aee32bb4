"""RSGI binding (granian): translate the RSGI request to HttpRequest and the HttpResponse back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from service.http.api import HttpRequest, HttpResponse, RestApi, StreamingResponse
from service.http.body import BODY_METHODS, UNDECODABLE, read_body

log = logging.getLogger(__name__)


class RsgiHeaders:
    """granian's headers, but a header whose value granian cannot decode reads as U+FFFD.

    granian answers None for such a value, which would otherwise look like an absent header and
    silently drop an If-Match or Idempotency-Key; U+FFFD fails every header's validation instead.
    """

    __slots__ = ("_headers",)

    def __init__(self, headers: Any) -> None:
        self._headers = headers

    def get(self, key: str, default: Any = None) -> Any:
        value = self._headers.get(key)
        if value is None:
            return UNDECODABLE if key in self._headers else default
        return value


class Worker(Protocol):
    """What one granian worker process runs the API with: built after the fork, closed at exit."""

    def start(self, loop: asyncio.AbstractEventLoop) -> RestApi: ...

    def close(self) -> None: ...


class RsgiApp:
    def __init__(self, worker: Worker) -> None:
        self.api: RestApi | None = None
        self._worker = worker

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Runs in each worker process: pools are per worker and never created before the fork.
        self.api = self._worker.start(loop)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._worker.close()

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        api = self.api
        assert api is not None
        headers = RsgiHeaders(scope.headers)
        body = b""
        too_large = False
        if scope.method in BODY_METHODS:
            body, too_large = await read_body(proto, headers.get("content-length"), api.max_body_bytes, proto)
        client = scope.client.rsplit(":", 1)[0] if scope.client else ""
        response = await api.handle(
            HttpRequest(scope.method, scope.path, scope.query_string, headers, body, too_large, client, scope)
        )
        if type(response) is HttpResponse:
            proto.response_bytes(response.status, response.headers, response.body)
        else:
            assert isinstance(response, StreamingResponse)
            await stream(proto, response)


async def stream(proto: Any, response: StreamingResponse) -> None:
    """Send the chunks as they come, until they end or the client goes away."""
    chunks = response.chunks
    assert chunks is not None
    transport = proto.response_stream(response.status, response.headers)

    async def pump() -> None:
        async for chunk in chunks:
            await transport.send_bytes(chunk)

    sending = asyncio.ensure_future(pump())
    gone = asyncio.ensure_future(proto.client_disconnect())
    try:
        await asyncio.wait((sending, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sending  # the client may be gone: nothing is left to tell it
        await chunks.aclose()
