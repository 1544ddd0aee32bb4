"""TLS and mTLS on both transports (granian's and grpcio's own), with certificates made by trustme."""

from __future__ import annotations

import socket
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.processes import start_until_ready
from tests.conftest import IsolatedSchema
from tests.e2e.conftest import ServiceProcess

if TYPE_CHECKING:
    from tests.conftest import TestServices

pytestmark = pytest.mark.e2e


class Pki:
    """A CA, the server's certificate for 127.0.0.1, and a client certificate, as PEM files."""

    def __init__(self, folder: Path) -> None:
        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.client = self.ca.issue_cert("client.orders.test")
        self.ca_file = folder / "ca.pem"
        self.cert_file = folder / "server.pem"
        self.key_file = folder / "server.key"
        self.client_file = folder / "client.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server.cert_chain_pems[0].write_to_path(str(self.cert_file))
        for extra in server.cert_chain_pems[1:]:
            extra.write_to_path(str(self.cert_file), append=True)
        server.private_key_pem.write_to_path(str(self.key_file))
        self.client.private_key_and_cert_chain_pem.write_to_path(str(self.client_file))

    def client_context(self, with_certificate: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if with_certificate:
            context.load_cert_chain(str(self.client_file))
        return context

    def grpc_credentials(self, with_certificate: bool, client_of: Pki | None = None) -> grpc.ChannelCredentials:
        """Trusting this CA; with this CA's client certificate, or with `client_of`'s when given."""
        client = (client_of or self).client
        chain = b"".join(blob.bytes() for blob in client.cert_chain_pems)
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=client.private_key_pem.bytes() if with_certificate else None,
            certificate_chain=chain if with_certificate else None,
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def start_tls(test_services: TestServices, schema: IsolatedSchema, pki: Pki, mutual: bool) -> ServiceProcess:
    env = {"TLS_CERT_FILE": str(pki.cert_file), "TLS_KEY_FILE": str(pki.key_file)}
    if mutual:
        env["TLS_CLIENT_CA_FILE"] = str(pki.ca_file)
    proc = ServiceProcess(schema.dsn, test_services.redis_url, "http,grpc", env)
    context = pki.client_context(with_certificate=True)

    def ready(pid: int) -> bool:
        with socket.create_connection(("127.0.0.1", proc.grpc_port), timeout=0.5):
            pass
        response = httpx.get(f"https://127.0.0.1:{proc.port}/health", verify=context, timeout=0.5)
        return response.status_code == 200

    proc.process = start_until_ready(
        [sys.executable, "-m", "service", "serve"],
        proc.env,
        proc.log_file,
        ready,
        30.0,
        not_yet=(httpx.HTTPError, OSError),
    )
    return proc


@pytest.fixture
def tls_service(test_services: TestServices, service_schema: IsolatedSchema) -> Iterator[Any]:
    started: list[ServiceProcess] = []

    def factory(pki: Pki, mutual: bool) -> ServiceProcess:
        proc = start_tls(test_services, service_schema, pki, mutual)
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.stop()


def alpn(port: int, context: ssl.SSLContext) -> str | None:
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.selected_alpn_protocol()


def grpc_health(target: str, credentials: grpc.ChannelCredentials | None) -> int:
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)


def test_tls_on_both_transports_and_plaintext_refused(tls_service: Any, pki: Pki) -> None:
    proc = tls_service(pki, mutual=False)
    context = pki.client_context(with_certificate=False)
    created = httpx.post(
        f"https://127.0.0.1:{proc.port}/orders", json={"product": "book", "quantity": 1}, verify=context
    )
    assert created.status_code == 201
    assert alpn(proc.port, pki.client_context(with_certificate=False)) == "h2"  # HTTP/2 by ALPN
    with pytest.raises(httpx.HTTPError):  # plaintext HTTP is not served
        httpx.get(f"http://127.0.0.1:{proc.port}/health", timeout=3)
    assert grpc_health(proc.grpc_target, pki.grpc_credentials(with_certificate=False)) >= 0
    with pytest.raises(grpc.RpcError) as caught:  # plaintext gRPC is not served
        grpc_health(proc.grpc_target, None)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_mtls_requires_a_client_certificate_signed_by_the_ca(tls_service: Any, pki: Pki, tmp_path: Path) -> None:
    proc = tls_service(pki, mutual=True)
    url = f"https://127.0.0.1:{proc.port}/health"
    assert httpx.get(url, verify=pki.client_context(with_certificate=True)).status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, verify=pki.client_context(with_certificate=False), timeout=3).raise_for_status()
    # a certificate from another CA is refused too
    (tmp_path / "other").mkdir()
    stranger = Pki(tmp_path / "other")
    foreign = pki.client_context(with_certificate=False)
    foreign.load_cert_chain(str(stranger.client_file))
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, verify=foreign, timeout=3).raise_for_status()

    assert grpc_health(proc.grpc_target, pki.grpc_credentials(with_certificate=True)) >= 0
    for credentials in (
        pki.grpc_credentials(with_certificate=False),
        pki.grpc_credentials(with_certificate=True, client_of=stranger),  # signed by another CA
        None,
    ):
        with pytest.raises(grpc.RpcError) as caught:
            grpc_health(proc.grpc_target, credentials)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
