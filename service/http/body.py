"""What every server binding shares: the request-body limit and how an undecodable header reads.

The bindings (RSGI in production; ASGI and robyn for the runtime benchmark, in
benchmarks/runtimes/) only translate their server's request into `HttpRequest` and `HttpResponse`
back. What they have in common but is not request handling lives here, so that no binding grows
its own variant of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable

BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))

UNDECODABLE = "\ufffd"
"""What a header value the server cannot decode as visible ASCII reads as.

Reading it as absent would silently drop an If-Match or Idempotency-Key; U+FFFD fails every
header's validation instead."""


async def read_body(
    chunks: AsyncIterable[bytes],
    content_length: str | None,
    limit: int,
    read_all: Callable[[], Awaitable[bytes]] | None = None,
) -> tuple[bytes, bool]:
    """The request body, or (b"", True) once it is known to exceed `limit` bytes.

    A declared Content-Length over the limit is refused without reading; a body without one
    (chunked) is read only until it passes the limit. `read_all`, when the server has one, reads
    a body of known, acceptable length in one call.
    """
    if content_length is not None:
        if not content_length.isdigit():
            return b"", False
        if int(content_length) > limit:
            return b"", True
        if read_all is not None:
            return await read_all(), False
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return b"", True
        parts.append(chunk)
    return b"".join(parts), False


def limit_read_body(body: bytes, limit: int) -> tuple[bytes, bool]:
    """The same limit for a server that has already read the whole body before the binding runs."""
    if len(body) > limit:
        return b"", True
    return body, False
