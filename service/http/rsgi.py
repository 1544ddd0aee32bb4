"""RSGI binding (granian): translate the RSGI request to HttpRequest and the HttpResponse back."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from service.app import Resources, build_rest_api
from service.config import load_settings
from service.http.core import HttpRequest, RestApi
from service.observability.logging import configure_logging
from service.observability.metrics import PoolGauges, publish_periodically

log = logging.getLogger(__name__)


async def read_body(proto: Any, content_length: str | None, limit: int) -> tuple[bytes, bool]:
    """The request body, or (b"", True) once it is known to exceed `limit` bytes."""
    if content_length is not None:
        if not content_length.isdigit():
            return b"", False
        if int(content_length) > limit:
            return b"", True
        return await proto(), False
    chunks: list[bytes] = []
    size = 0
    async for chunk in proto:
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
    return b"".join(chunks), False


UNDECODABLE = "\ufffd"


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


class RsgiApp:
    def __init__(self) -> None:
        self.api: RestApi | None = None
        self._resources: Resources | None = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Runs in each worker process: pools are per worker and never created before the fork.
        settings = load_settings()
        configure_logging(settings.log_level, role="http")
        self._resources = Resources(settings, role="http")
        self.api = build_rest_api(settings, self._resources)
        publish_periodically(loop, PoolGauges("http", self._resources.db.stats))

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._resources is not None:
            self._resources.db.close()

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        api = self.api
        assert api is not None
        headers = RsgiHeaders(scope.headers)
        body = b""
        too_large = False
        if scope.method in ("POST", "PUT", "PATCH"):
            body, too_large = await read_body(proto, headers.get("content-length"), api.max_body_bytes)
        response = await api.handle(HttpRequest(scope.method, scope.path, scope.query_string, headers, body, too_large))
        proto.response_bytes(response.status, response.headers, response.body)


app = RsgiApp()
