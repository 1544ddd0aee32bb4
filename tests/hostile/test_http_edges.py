"""HTTP edge cases against the running server over raw sockets.

Slow clients, hundreds of idle connections, header floods, pipelining, invalid UTF-8 and broken
framing. Every hostile request gets a 4xx or a closed connection, never a 5xx or a hang, and
other clients are answered throughout (each within a generous 10 s; no timing is asserted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.e2e.conftest import ServiceProcess

pytestmark = [pytest.mark.e2e, pytest.mark.hostile]

PATIENCE = 10.0  # seconds any answer may take; only a hang exceeds it
CREATE_BODY = b'{"product": "edge", "quantity": 1}'


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class RawConnection:
    """One TCP connection that writes exactly the bytes given and parses HTTP/1.1 responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), PATIENCE)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> Response | None:
        """The next response, or None when the server closed the connection instead."""
        return await asyncio.wait_for(self._read_response(), PATIENCE)

    async def _read_response(self) -> Response | None:
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await self.reader.readexactly(length) if length else b""
        return Response(status, headers, body)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def request(
    method: str, target: bytes | str, headers: dict[str, bytes | str] | None = None, body: bytes = b""
) -> bytes:
    raw_target = target.encode() if isinstance(target, str) else target
    lines = [method.encode() + b" " + raw_target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    for name, value in (headers or {}).items():
        lines.append(name.encode() + b": " + (value.encode() if isinstance(value, str) else value))
    if body or method in ("POST", "PUT"):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.fixture
async def client(hostile_service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hostile_service.base_url, timeout=PATIENCE) as http:
        yield http


async def normal_requests(client: httpx.AsyncClient, count: int = 3) -> None:
    """What another client does meanwhile: each request must be answered (within PATIENCE)."""
    for _ in range(count):
        created = await client.post("/orders", json={"product": "bystander", "quantity": 2})
        assert created.status_code == 201, created.text
        fetched = await client.get(f"/orders/{created.json()['id']}")
        assert fetched.status_code == 200
        assert (await client.get("/health")).status_code == 200


# ---- slow clients -----------------------------------------------------------------------------


async def test_body_sent_one_byte_per_second_does_not_hold_up_others(
    hostile_service: ServiceProcess, client: httpx.AsyncClient
) -> None:
    conn = await RawConnection.open(hostile_service.port)
    try:
        await conn.send(
            request("POST", "/orders", {"Content-Type": "application/json"}, CREATE_BODY)[: -len(CREATE_BODY)]
        )
        answered = 0
        for byte in CREATE_BODY[:4]:
            await conn.send(bytes([byte]))
            await normal_requests(client, 1)  # answered while the slow body is in flight
            answered += 1
            await asyncio.sleep(1)
        await conn.send(CREATE_BODY[4:])
        response = await conn.response()
        assert response is not None and response.status == 201
        assert json.loads(response.body)["product"] == "edge"
        assert answered == 4
    finally:
        await conn.close()


async def test_headers_sent_one_byte_per_second_do_not_hold_up_others(
    hostile_service: ServiceProcess, client: httpx.AsyncClient
) -> None:
    raw = request("GET", "/health", {"X-Request-ID": "slow-headers"})
    conn = await RawConnection.open(hostile_service.port)
    try:
        for byte in raw[:3]:
            await conn.send(bytes([byte]))
            await normal_requests(client, 1)
            await asyncio.sleep(1)
        await conn.send(raw[3:])
        response = await conn.response()
        assert response is None or response.status == 200
    finally:
        await conn.close()


# ---- many idle connections --------------------------------------------------------------------


async def test_five_hundred_idle_connections_do_not_stop_a_normal_request(
    hostile_service: ServiceProcess, client: httpx.AsyncClient
) -> None:
    idle: list[RawConnection] = []
    try:
        for _ in range(250):  # connected, nothing sent
            idle.append(await RawConnection.open(hostile_service.port))
        for _ in range(250):  # one request answered, then left open (keep-alive)
            conn = await RawConnection.open(hostile_service.port)
            idle.append(conn)
            await conn.send(request("GET", "/health"))
            response = await conn.response()
            assert response is not None and response.status == 200
        await normal_requests(client, 3)
        # A kept-alive connection still answers (or was closed by the server, never hangs).
        await idle[-1].send(request("GET", "/health"))
        again = await idle[-1].response()
        assert again is None or again.status == 200
    finally:
        await asyncio.gather(*(conn.close() for conn in idle))
    await normal_requests(client, 1)


# ---- header floods ----------------------------------------------------------------------------

# (headers, refused): a flood past granian's limits must be refused (4xx or closed); a large
# header within them may also be answered normally, but never with a 5xx.
FLOODS: dict[str, tuple[dict[str, bytes | str], bool]] = {
    "2000 headers": ({f"X-Flood-{i}": "v" for i in range(2000)}, True),
    "one 1 MiB header": ({"X-Big": "a" * (1 << 20)}, True),
    "150 headers of 1 KiB": ({f"X-Flood-{i}": "b" * 1024 for i in range(150)}, True),
    "64 KiB cookie": ({"Cookie": "c=" + "d" * (64 * 1024)}, False),
}


@pytest.mark.parametrize(("headers", "refused"), FLOODS.values(), ids=FLOODS.keys())
async def test_header_flood_is_refused_and_others_are_answered(
    hostile_service: ServiceProcess, client: httpx.AsyncClient, headers: dict[str, bytes | str], refused: bool
) -> None:
    async def flood() -> Response | None:
        conn = await RawConnection.open(hostile_service.port)
        try:
            with contextlib.suppress(ConnectionError):
                await conn.send(request("GET", "/health", headers))
            return await conn.response()
        finally:
            await conn.close()

    outcomes = await asyncio.gather(*(flood() for _ in range(10)), normal_requests(client, 3))
    for response in outcomes[:10]:
        assert response is None or response.status < 500, response.status  # type: ignore[union-attr]
        if refused:
            assert response is None or 400 <= response.status < 500, response.status  # type: ignore[union-attr]
    await normal_requests(client, 1)


# ---- pipelining -------------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order(hostile_service: ServiceProcess) -> None:
    unknown = str(uuid.uuid4())
    batch = [
        (request("GET", "/health", {"X-Request-ID": "pipe-1"}), 200),
        (request("POST", "/orders", {"X-Request-ID": "pipe-2", "Content-Type": "application/json"}, CREATE_BODY), 201),
        (request("GET", f"/orders/{unknown}", {"X-Request-ID": "pipe-3"}), 404),
        (request("GET", "/orders?limit=2", {"X-Request-ID": "pipe-4"}), 200),
        (
            request("PUT", f"/orders/{unknown}", {"X-Request-ID": "pipe-5", "Content-Type": "application/json"}, b"{}"),
            400,
        ),
        (request("GET", "/openapi.json", {"X-Request-ID": "pipe-6"}), 200),
    ]
    conn = await RawConnection.open(hostile_service.port)
    try:
        await conn.send(b"".join(raw for raw, _ in batch))  # one write: all requests before any answer
        answers = [await conn.response() for _ in batch]
    finally:
        await conn.close()
    assert all(a is not None for a in answers)
    assert [(a.headers["x-request-id"], a.status) for a in answers if a is not None] == [
        (f"pipe-{i}", status) for i, (_, status) in enumerate(batch, start=1)
    ]


# ---- invalid UTF-8 and broken framing ----------------------------------------------------------

ORDER = b"/orders/01a23aad-4a32-73b6-94fe-35ee1044148c"
JSON_TYPE = {"Content-Type": "application/json"}
MALFORMED = {
    "raw invalid UTF-8 in the path": request("GET", b"/orders/\xff\xfe"),
    "raw invalid UTF-8 in the query": request("GET", b"/orders?status=\xc3\x28"),
    "percent-encoded invalid UTF-8 in the path": request("GET", "/orders/%ff%fe"),
    "percent-encoded invalid UTF-8 in the query": request("GET", "/orders?status=%ff&cursor=%c3%28"),
    "percent-encoded invalid UTF-8 in limit": request("GET", "/orders?limit=%ff"),
    "control characters in the path": request("GET", b"/orders/\x01\x7f"),
    "invalid UTF-8 in If-Match": request("DELETE", ORDER, {"If-Match": b'"\xc3\x28"'}),
    "invalid UTF-8 in Idempotency-Key": request(
        "POST", "/orders", {**JSON_TYPE, "Idempotency-Key": b"\xc3\x28"}, CREATE_BODY
    ),
    "invalid UTF-8 in Content-Type": request("POST", "/orders", {"Content-Type": b"application/\xff"}, CREATE_BODY),
    "invalid UTF-8 in the body": request("POST", "/orders", JSON_TYPE, b'{"product": "\xff", "quantity": 1}'),
    "Content-Length not a number": b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: \xff\r\n\r\n",
    "negative Content-Length": b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "two Content-Lengths": b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "Content-Length and chunked": (
        b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "bad chunk size": b"POST /orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    "100 KB path": request("GET", "/" + "a" * 100_000),
    "Content-Length of 1 TB": b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n{",
    "chunked body past the 64 KiB limit": b"POST /orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    + (b"4000\r\n" + b" " * 0x4000 + b"\r\n") * 6  # 6 chunks of 16 KiB
    + b"0\r\n\r\n",
    "invalid method": b"G\xffT /health HTTP/1.1\r\nHost: x\r\n\r\n",
    "TLS hello": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(50),
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_request_is_a_4xx_never_a_5xx(
    hostile_service: ServiceProcess, client: httpx.AsyncClient, raw: bytes
) -> None:
    conn = await RawConnection.open(hostile_service.port)
    try:
        with contextlib.suppress(ConnectionError):  # the server may answer and close before reading it all
            await conn.send(raw)
        response = await conn.response()
    finally:
        await conn.close()
    assert response is not None, "closed without an answer"
    assert 400 <= response.status < 500, (response.status, response.body)
    await normal_requests(client, 1)


async def test_invalid_utf8_request_id_is_replaced_not_refused(hostile_service: ServiceProcess) -> None:
    conn = await RawConnection.open(hostile_service.port)
    try:
        await conn.send(request("GET", "/health", {"X-Request-ID": b"\xff\xfe"}))
        response = await conn.response()
    finally:
        await conn.close()
    assert response is not None and response.status == 200
    uuid.UUID(response.headers["x-request-id"])  # a fresh id instead of the undecodable one
