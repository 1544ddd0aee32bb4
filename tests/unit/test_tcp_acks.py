"""sock_diag readings of real TCP connections over loopback, held to the sockets' own tcp_info."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from service.http.tcp_acks import Endpoint, PeerAcks, SockDiag, TcpState, endpoint

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="sock_diag is Linux's")

T = TypeVar("T")


def _until(read: Callable[[], T], done: Callable[[T], bool], seconds: float = 3.0) -> T:
    """`read()` again until `done` holds of it (acknowledgements arrive a little later), or time is up."""
    deadline = time.monotonic() + seconds
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
    return value


def _own_bytes_acked(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("=Q", info, 120)[0])  # tcpi_bytes_acked


def _named(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """A socket address as servers print it ("[::1]:8080" for IPv6)."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ends(sock: socket.socket) -> tuple[Endpoint, Endpoint]:
    local, remote = endpoint(_named(sock.getsockname())), endpoint(_named(sock.getpeername()))
    assert local is not None and remote is not None
    return local, remote


def _fill(sock: socket.socket) -> int:
    """Write to `sock` until the kernel takes no more (its peer reads nothing); the bytes written."""
    sock.setblocking(False)
    written = 0
    with contextlib.suppress(BlockingIOError):
        while written < 64 << 20:
            written += sock.send(b"x" * 65536)
    return written


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server side, client side) of a loopback connection whose client reads into a small buffer."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    with server, client:
        yield server, client


def test_endpoints_read_as_servers_print_them() -> None:
    v4 = endpoint("127.0.0.1:8080")
    assert v4 == Endpoint(socket.AF_INET, bytes([127, 0, 0, 1]) + bytes(12), 8080)
    assert v4 is not None
    v6 = endpoint("[::1]:443")
    assert v6 == Endpoint(socket.AF_INET6, bytes(15) + b"\x01", 443)
    anywhere = endpoint("0.0.0.0:80")
    assert anywhere is not None and anywhere.unspecified and not v4.unspecified
    for text in ("", "/run/orders.sock", "localhost:80", "127.0.0.1", "127.0.0.1:99999", "[::1]:x"):
        assert endpoint(text) is None, text


def test_bytes_written_and_unread_are_unacknowledged_then_acknowledged_once_read(
    connection: tuple[socket.socket, socket.socket],
) -> None:
    server, client = connection
    written = _fill(server)
    diag = SockDiag()
    local, remote = _ends(server)

    def reading() -> tuple[int, TcpState | None, int]:
        return _own_bytes_acked(server), diag.lookup(local, remote), _own_bytes_acked(server)

    before, state, after = _until(reading, lambda r: r[1] is not None and r[0] == r[1].bytes_acked == r[2])
    assert state is not None
    assert state.bytes_acked == before == after  # what the socket itself says
    assert state.local == local and state.remote == remote
    assert state.bytes_acked + state.unacknowledged == written
    assert 0 < state.bytes_acked < written  # the client's small receive buffer took (and acknowledged) a part

    received = 0
    client.settimeout(5)
    while received < written:
        received += len(client.recv(1 << 20))
    done = _until(lambda: diag.lookup(local, remote), lambda s: s is not None and s.unacknowledged == 0)
    assert done is not None and done.bytes_acked == written and done.unacknowledged == 0


def test_a_listener_on_an_unspecified_address_finds_its_connection_by_ports() -> None:
    with socket.create_server(("0.0.0.0", 0)) as listener:
        port = listener.getsockname()[1]
        with (
            socket.create_connection(("127.0.0.1", port)) as other,
            socket.create_connection(("127.0.0.1", port)) as mine,
        ):
            accepted = [listener.accept()[0], listener.accept()[0]]
            try:
                remote = endpoint(_named(mine.getsockname()))
                assert remote is not None
                state = SockDiag().find(port, remote)
                assert state is not None
                assert state.local == Endpoint(socket.AF_INET, bytes([127, 0, 0, 1]) + bytes(12), port)
                assert state.remote == remote and other.getsockname() != mine.getsockname()
            finally:
                for sock in accepted:
                    sock.close()


def test_an_ipv6_connection_is_found_too() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback")
    with listener, socket.create_connection(listener.getsockname()[:2]) as client:
        server, _ = listener.accept()
        with server:
            server.sendall(b"hello")
            assert client.recv(5) == b"hello"
            local, remote = _ends(server)
            assert local.family == socket.AF_INET6
            state = _until(lambda: SockDiag().lookup(local, remote), lambda s: s is not None and s.bytes_acked == 5)
            assert state is not None and state.bytes_acked == 5


def test_peer_acks_count_from_their_start_and_end_with_the_connection(
    connection: tuple[socket.socket, socket.socket],
) -> None:
    server, client = connection
    server.sendall(b"head")
    assert client.recv(4) == b"head"
    _until(lambda: _own_bytes_acked(server), lambda acked: acked == 4)
    local, remote = _ends(server)
    acks = PeerAcks.start(SockDiag(), _named(server.getsockname()), _named(server.getpeername()))
    assert acks is not None
    server.sendall(b"body" * 10)
    client.settimeout(5)
    received = b""
    while len(received) < 40:
        received += client.recv(64)
    reading = _until(acks.reading, lambda r: r is not None and r.acknowledged == 40)
    assert reading is not None and (reading.acknowledged, reading.unacknowledged) == (40, 0)
    assert SockDiag().lookup(local, remote) is not None
    client.close()
    server.close()
    assert _until(acks.reading, lambda r: r is None) is None


def test_an_unknown_connection_or_end_reads_as_none() -> None:
    diag = SockDiag()
    nowhere = endpoint("127.0.0.1:1")
    assert nowhere is not None
    assert diag.lookup(nowhere, nowhere) is None
    assert PeerAcks.start(diag, "unix:/run/orders.sock", "127.0.0.1:5000") is None
    assert PeerAcks.start(diag, "127.0.0.1:8080", "[::1]:5000") is None  # families differ


def test_where_netlink_is_refused_every_lookup_is_none_and_it_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    diag = SockDiag()
    asked: list[int] = []

    def refused(*args: object) -> list[TcpState]:
        asked.append(1)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(diag, "_exchange", refused)
    nowhere = endpoint("127.0.0.1:1")
    assert nowhere is not None
    with caplog.at_level(logging.WARNING, logger="service.http.tcp_acks"):
        assert diag.lookup(nowhere, nowhere) is None
        assert diag.find(1, nowhere) is None
        assert PeerAcks.start(diag, "127.0.0.1:1", "127.0.0.1:2") is None
    assert len(asked) == 1  # not asked again
    assert [r.getMessage() for r in caplog.records] == [
        "TCP acknowledgements cannot be read: slow SSE watchers are not detected"
    ]
