"""The request and response every server binding translates to and from, and every handler takes."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol

import msgspec


class Headers(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...


class Connection(Protocol):
    """The connection a request came on, each end as its server names it ("host:port", "[v6]:port")."""

    @property
    def server(self) -> str: ...

    @property
    def client(self) -> str: ...


class HttpRequest(msgspec.Struct):
    method: str
    path: str
    query_string: str
    headers: Headers | Mapping[str, str]
    body: bytes = b""
    body_too_large: bool = False
    client: str = ""  # the peer's address, without its port (the rate limit's key)
    connection: Connection | None = None  # given by a binding that buffers streams without backpressure


class HttpResponse(msgspec.Struct):
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


class StreamingResponse(HttpResponse):
    """A response whose body is `chunks`, sent as they come (bindings: `type(r) is HttpResponse`
    is the plain path). The access line and metric are taken when the stream starts."""

    chunks: AsyncGenerator[bytes, None] | None = None
