"""How much of a TCP connection's output its peer has acknowledged, asked of the kernel (sock_diag).

A server that buffers a streamed response without backpressure never tells whether the client
keeps up; the kernel does: `tcp_info.tcpi_bytes_acked` counts the bytes the peer acknowledged and
`idiag_wqueue` those written to the socket but not acknowledged yet. A connection is looked up by
its two ends over NETLINK_SOCK_DIAG (SOCK_DIAG_BY_FAMILY, INET_DIAG_INFO): Linux only, no
privileges needed. Anything else (another OS, a Unix socket, netlink refused) reads as unknown.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2
ALL_STATES = 0xFFFFFFFF
NO_COOKIE = b"\xff" * 8  # INET_DIAG_NOCOOKIE twice: any socket with these ends

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_REQUEST = struct.Struct("=BBBxI")  # inet_diag_req_v2 before its socket id: family, protocol, extensions, states
_PORTS = struct.Struct("!HH")  # inet_diag_sockid starts with the source and destination port, big-endian
_ATTRIBUTE = struct.Struct("=HH")  # nlattr: length (header included), type
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_ERRNO = struct.Struct("=i")
# inet_diag_msg: family, state, timer, retrans, then the socket id (ports, source, destination,
# interface, cookie), expires, rqueue, wqueue, uid, inode; its attributes follow.
_MSG_SIZE = 72
_SRC, _DST, _COOKIE, _WQUEUE = 8, 24, 44, 60
_BYTES_ACKED = 120  # offset of tcpi_bytes_acked in struct tcp_info (Linux 4.1 and later)
_GONE = frozenset((errno.ENOENT, errno.ESTALE))  # no such connection; not that socket (cookie) any more


@dataclass(frozen=True, slots=True)
class Endpoint:
    family: int
    address: bytes  # 16 bytes, as in inet_diag_sockid (an IPv4 address is the first 4)
    port: int

    @property
    def unspecified(self) -> bool:
        return not any(self.address)


def endpoint(text: str) -> Endpoint | None:
    """The end of a connection written "127.0.0.1:8080" or "[::1]:8080"; None for anything else."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 0xFFFF:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 4:
        return Endpoint(socket.AF_INET, ip.packed + bytes(12), int(port))
    return Endpoint(socket.AF_INET6, ip.packed, int(port))


@dataclass(frozen=True, slots=True)
class TcpState:
    local: Endpoint
    remote: Endpoint
    cookie: bytes  # the kernel's id of the socket: a lookup with it finds this socket or none
    bytes_acked: int  # bytes the peer acknowledged since the connection opened
    unacknowledged: int  # bytes written to the socket that the peer has not acknowledged


class SockDiag:
    """This process's netlink socket for looking up TCP connections, opened on first use.

    The kernel answers within the request, so a lookup blocks nobody. Where netlink cannot be
    used every lookup answers None, and the first failure is logged (once).
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._sequence = itertools.count(1)
        self._failure: Exception | None = None

    def lookup(self, local: Endpoint, remote: Endpoint, cookie: bytes = NO_COOKIE) -> TcpState | None:
        """The connection between these ends (that socket, given its `cookie`); None when there is none."""
        socket_id = _PORTS.pack(local.port, remote.port) + local.address + remote.address + _U32.pack(0) + cookie
        states = self._ask(local.family, NLM_F_REQUEST, socket_id)
        return states[0] if states else None

    def find(self, local_port: int, remote: Endpoint) -> TcpState | None:
        """The connection from `remote` to this host's `local_port`, on whichever local address.

        For a listener bound to an unspecified address, whose connections' local address is not
        known otherwise: a dump of the sockets with both ports (the kernel skips all others)."""
        socket_id = _PORTS.pack(local_port, remote.port) + bytes(32) + _U32.pack(0) + NO_COOKIE
        for state in self._ask(remote.family, NLM_F_REQUEST | NLM_F_DUMP, socket_id):
            if state.remote == remote and state.local.port == local_port:
                return state
        return None

    def _ask(self, family: int, flags: int, socket_id: bytes) -> list[TcpState]:
        if self._failure is not None:
            return []
        try:
            return self._exchange(family, flags, socket_id)
        except (OSError, struct.error) as exc:  # refused, or not understood: asking again would not help
            log.warning(
                "TCP acknowledgements cannot be read: slow SSE watchers are not detected", extra={"error": repr(exc)}
            )
            self._failure = exc
            if self._sock is not None:
                self._sock.close()
            return []

    def _exchange(self, family: int, flags: int, socket_id: bytes) -> list[TcpState]:
        sock = self._sock
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
            sock.setblocking(False)
            self._sock = sock
        sequence = next(self._sequence)
        body = _REQUEST.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), ALL_STATES) + socket_id
        sock.sendto(_HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, flags, sequence, 0) + body, (0, 0))
        states: list[TcpState] = []
        while True:
            answered = False
            for kind, payload in _messages(sock.recv(65536), sequence):
                answered = True
                if kind == NLMSG_ERROR:
                    code = -_ERRNO.unpack_from(payload)[0]
                    if code and code not in _GONE:
                        raise OSError(code, f"sock_diag: {os.strerror(code)}")
                    return states
                if kind == NLMSG_DONE:
                    return states
                if kind == SOCK_DIAG_BY_FAMILY and (state := _state(payload)) is not None:
                    states.append(state)
            if answered and not flags & NLM_F_DUMP:
                return states


def _messages(data: bytes, sequence: int) -> Iterator[tuple[int, bytes]]:
    """Type and payload of each netlink message of `data` that answers request `sequence`."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, answered, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            return
        if answered == sequence:
            yield kind, data[offset + _HEADER.size : offset + length]
        offset += (length + 3) & ~3


def _state(msg: bytes) -> TcpState | None:
    """The TcpState of one inet_diag_msg; None without a tcp_info that has bytes_acked."""
    if len(msg) < _MSG_SIZE:
        return None
    family = msg[0]
    local_port, remote_port = _PORTS.unpack_from(msg, 4)
    offset = _MSG_SIZE
    while offset + _ATTRIBUTE.size <= len(msg):
        length, kind = _ATTRIBUTE.unpack_from(msg, offset)
        if length < _ATTRIBUTE.size:
            return None
        value = msg[offset + _ATTRIBUTE.size : offset + length]
        if kind & 0x3FFF == INET_DIAG_INFO and len(value) >= _BYTES_ACKED + _U64.size:
            return TcpState(
                local=Endpoint(family, msg[_SRC : _SRC + 16], local_port),
                remote=Endpoint(family, msg[_DST : _DST + 16], remote_port),
                cookie=msg[_COOKIE : _COOKIE + 8],
                bytes_acked=_U64.unpack_from(value, _BYTES_ACKED)[0],
                unacknowledged=_U32.unpack_from(msg, _WQUEUE)[0],
            )
        offset += (length + 3) & ~3
    return None


@dataclass(frozen=True, slots=True)
class Acks:
    acknowledged: int  # bytes the peer acknowledged since the reading started
    unacknowledged: int  # bytes the kernel holds that the peer has not acknowledged


class PeerAcks:
    """Readings of one connection's acknowledgements, counted from when it was started."""

    def __init__(self, diag: SockDiag, state: TcpState) -> None:
        self._diag = diag
        self._state = state

    @classmethod
    def start(cls, diag: SockDiag, server: str, client: str) -> PeerAcks | None:
        """From now on, for the connection whose ends its server names `server` and `client`."""
        local, remote = endpoint(server), endpoint(client)
        if local is None or remote is None or local.family != remote.family:
            return None
        state = diag.find(local.port, remote) if local.unspecified else diag.lookup(local, remote)
        return None if state is None else cls(diag, state)

    def reading(self) -> Acks | None:
        """None once the connection is gone (or the kernel cannot be asked)."""
        start = self._state
        now = self._diag.lookup(start.local, start.remote, start.cookie)
        return None if now is None else Acks(now.bytes_acked - start.bytes_acked, now.unacknowledged)
