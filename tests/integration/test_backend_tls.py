"""TLS to the backends, against real servers that speak nothing else (issue 17).

A private PostgreSQL 15 with `ssl=on` and a hostssl-only pg_hba (a plaintext connection is
refused by the server), and a private redis-server listening on a TLS port only, both with
certificates from a trustme CA made here. The server certificates name 127.0.0.1 only, so a
connection to `localhost` exercises the host name check.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import trustme

from benchmarks.processes import ServiceProcess
from service.app import Resources
from service.config import ConfigError, load_settings
from service.store.database import Database
from service.store.migrator import migrate
from tests.conftest import free_port
from tests.e2e.conftest import settled_ready
from tests.private_servers import PrivatePostgres, wait_until

pytestmark = pytest.mark.integration


@dataclass
class Pki:
    ca: Path  # the CA that issued the servers' certificates
    wrong_ca: Path  # a CA that issued nothing here
    cert: Path  # server certificate (for 127.0.0.1), key next to it
    key: Path


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    folder = Path(tempfile.mkdtemp(prefix="orders-tls-pki-"))
    try:
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1")
        found = Pki(folder / "ca.pem", folder / "wrong-ca.pem", folder / "server.crt", folder / "server.key")
        ca.cert_pem.write_to_path(str(found.ca))
        trustme.CA().cert_pem.write_to_path(str(found.wrong_ca))
        issued.cert_chain_pems[0].write_to_path(str(found.cert))
        issued.private_key_pem.write_to_path(str(found.key))
        yield found
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_postgres(pki: Pki) -> Iterator[PrivatePostgres]:
    """A private PostgreSQL that accepts TCP connections over TLS only."""
    server = PrivatePostgres()  # skips without PostgreSQL binaries (or as root without runuser)
    try:
        server.init()
        owner = server.data.owner()
        for source, name in ((pki.cert, "server.crt"), (pki.key, "server.key")):
            target = server.data / name
            shutil.copyfile(source, target)
            shutil.chown(target, owner)
            target.chmod(0o600)  # PostgreSQL refuses a key others can read
        with (server.data / "postgresql.conf").open("a") as conf:
            conf.write("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        # No `host` line: a plaintext TCP connection finds no pg_hba entry and is refused.
        (server.data / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n"
        )
        server.start()
        yield server
    finally:
        server.cleanup()


def _pg_url(server: PrivatePostgres, query: str, host: str = "127.0.0.1") -> str:
    return f"postgresql://postgres@{host}:{server.port}/postgres?{query}"


async def _ssl_in_use(dsn: str) -> bool:
    db = Database(dsn, pool_size=2, acquire_timeout=5.0)
    try:
        rows = await db.fetch("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        return bool(rows[0][0])
    finally:
        db.close()


async def _connect_error(dsn: str) -> str:
    """The error text (with its causes) of a first query through the service's pool."""
    db = Database(dsn, pool_size=2, acquire_timeout=5.0)
    try:
        with pytest.raises(Exception) as caught:
            await db.fetch("SELECT 1")
    finally:
        db.close()
    texts: list[str] = []
    exc: BaseException | None = caught.value
    while exc is not None:
        texts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(texts)


async def test_verify_full_connects_over_tls_and_runs_the_migrations(tls_postgres: PrivatePostgres, pki: Pki) -> None:
    dsn = _pg_url(tls_postgres, f"sslmode=verify-full&sslrootcert={pki.ca}")
    assert await _ssl_in_use(dsn)
    await migrate(dsn)  # the migrator's own pool goes through tls_options too
    db = Database(dsn, pool_size=2, acquire_timeout=5.0)
    try:
        rows = await db.fetch("SELECT count(*) FROM orders")
        assert rows[0][0] == 0
    finally:
        db.close()


@pytest.mark.parametrize("mode", ["verify-ca", "require"])
async def test_verify_ca_and_require_with_the_ca_connect_over_tls(
    tls_postgres: PrivatePostgres, pki: Pki, mode: str
) -> None:
    assert await _ssl_in_use(_pg_url(tls_postgres, f"sslmode={mode}&sslrootcert={pki.ca}"))


async def test_require_without_a_ca_encrypts_without_verifying(tls_postgres: PrivatePostgres) -> None:
    """libpq's `require`: TLS, the certificate not checked (no sslrootcert given)."""
    assert await _ssl_in_use(_pg_url(tls_postgres, "sslmode=require"))


@pytest.mark.parametrize("mode", ["verify-full", "verify-ca", "require"])
async def test_a_certificate_from_another_ca_is_refused(tls_postgres: PrivatePostgres, pki: Pki, mode: str) -> None:
    error = await _connect_error(_pg_url(tls_postgres, f"sslmode={mode}&sslrootcert={pki.wrong_ca}"))
    assert "certificate verify failed" in error, error


async def test_verify_full_checks_the_host_name(tls_postgres: PrivatePostgres, pki: Pki) -> None:
    """The certificate names 127.0.0.1, not localhost."""
    error = await _connect_error(_pg_url(tls_postgres, f"sslmode=verify-full&sslrootcert={pki.ca}", "localhost"))
    assert "certificate verify failed" in error, error
    assert "hostname mismatch" in error, error


async def test_plaintext_is_refused_by_the_server(tls_postgres: PrivatePostgres) -> None:
    error = await _connect_error(_pg_url(tls_postgres, "sslmode=disable"))
    assert "no encryption" in error, error


@pytest.mark.parametrize("mode", ["verify-full", "verify-ca"])
async def test_a_verify_mode_without_a_ca_is_refused_not_left_unverified(
    tls_postgres: PrivatePostgres, mode: str
) -> None:
    """psqlpy's Require without a CA file checks nothing: the service must not connect at all."""
    dsn = _pg_url(tls_postgres, f"sslmode={mode}")
    with pytest.raises(ValueError, match="needs sslrootcert"):
        Database(dsn, pool_size=2, acquire_timeout=5.0)
    with pytest.raises(ValueError, match="needs sslrootcert"):
        await migrate(dsn)
    with pytest.raises(ConfigError, match=f"DATABASE_URL: sslmode={mode} needs sslrootcert"):
        load_settings({"DATABASE_URL": dsn})


def test_the_urls_tls_options_are_checked_at_start(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="sslmode='verify_full' must be one of"):
        load_settings({"DATABASE_URL": "postgresql://u@h/db?sslmode=verify_full"})
    ok = f"postgresql://u@h/db?sslmode=verify-full&sslrootcert={pki.ca}"
    assert load_settings({"DATABASE_URL": ok}).database_url == ok
    with pytest.raises(ConfigError, match="REDIS_URL: ssl_ca_certs need a rediss:// URL"):
        load_settings({"REDIS_URL": f"redis://h:6379/0?ssl_ca_certs={pki.ca}"})
    ok = f"rediss://h:6379/0?ssl_ca_certs={pki.ca}"
    assert load_settings({"REDIS_URL": ok}).redis_url == ok


async def test_verify_ca_checks_the_host_name_too(tls_postgres: PrivatePostgres, pki: Pki) -> None:
    """A psqlpy limitation (README): with a CA it always checks the host name, so verify-ca is
    verify-full here (libpq's verify-ca would accept this certificate for localhost)."""
    error = await _connect_error(_pg_url(tls_postgres, f"sslmode=verify-ca&sslrootcert={pki.ca}", "localhost"))
    assert "hostname mismatch" in error, error


# ---- Redis --------------------------------------------------------------------------------------


class TlsRedis:
    """A private redis-server on a TLS port only (`--port 0`), clients not asked for certificates."""

    def __init__(self, pki: Pki) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("no redis-server binary")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="orders-tls-redis-"))
        self.ca = pki.ca
        self.log = self.dir / "redis.log"
        self.process = subprocess.Popen(
            [
                binary,
                *("--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1"),
                *("--tls-cert-file", str(pki.cert), "--tls-key-file", str(pki.key)),
                *("--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "no"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"),
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def url(self, query: str = "", host: str = "127.0.0.1", scheme: str = "rediss") -> str:
        return f"{scheme}://{host}:{self.port}/0" + (f"?{query}" if query else "")

    def verified_url(self) -> str:
        return self.url(f"ssl_ca_certs={self.ca}")

    def wait_ready(self) -> None:
        def up() -> bool:
            if self.process.poll() is not None:
                pytest.skip(f"redis-server does not run with TLS here: {self.log.read_text(errors='replace')[-500:]}")
            client = redis.Redis.from_url(self.verified_url(), socket_timeout=1, socket_connect_timeout=1)
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False
            finally:
                client.close()

        wait_until(up, timeout=10, what="TLS redis-server up")

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_redis(pki: Pki) -> Iterator[TlsRedis]:
    server = TlsRedis(pki)
    try:
        server.wait_ready()
        yield server
    finally:
        server.cleanup()


async def test_the_services_redis_client_works_over_verified_tls(
    tls_redis: TlsRedis, tls_postgres: PrivatePostgres, pki: Pki
) -> None:
    """Resources builds the one client the relay, the consumer, the watch hub and readiness share."""
    settings = load_settings(
        {
            "DATABASE_URL": _pg_url(tls_postgres, f"sslmode=verify-full&sslrootcert={pki.ca}"),
            "REDIS_URL": tls_redis.verified_url(),
        }
    )
    resources = Resources(settings, role="worker")
    try:
        stream = f"tls-{uuid.uuid4().hex[:8]}"
        entry = await resources.redis.xadd(stream, {"k": "v"})
        assert [e[0] for e in await resources.redis.xrange(stream)] == [entry]
        await resources.redis.delete(stream)
        await resources.dependencies.refresh()
        assert resources.dependencies.snapshot() == (True, {"postgres": "ok", "redis": "ok"})
    finally:
        await resources.aclose()


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("no CA", "certificate verify failed"),  # the system's CAs do not know the test CA
        ("wrong CA", "certificate verify failed"),
        ("localhost", "hostname mismatch"),
        ("plaintext", "connection"),
    ],
)
async def test_redis_tls_is_verified_and_never_plaintext(
    tls_redis: TlsRedis, pki: Pki, how: str, expected: str
) -> None:
    url = {
        "no CA": tls_redis.url(),
        "wrong CA": tls_redis.url(f"ssl_ca_certs={pki.wrong_ca}"),
        "localhost": tls_redis.url(f"ssl_ca_certs={pki.ca}", host="localhost"),
        "plaintext": tls_redis.url(scheme="redis"),
    }[how]
    settings = load_settings({"REDIS_URL": url})
    resources = Resources(settings, role="worker")
    try:
        with pytest.raises(redis.ConnectionError) as caught:
            await resources.redis.ping()
        assert expected in str(caught.value).lower(), caught.value
    finally:
        await resources.aclose()


# ---- the whole service --------------------------------------------------------------------------


def test_the_service_runs_on_tls_only_backends(tls_postgres: PrivatePostgres, tls_redis: TlsRedis, pki: Pki) -> None:
    """`orders-service serve` migrates a fresh database over verify-full TLS, and an order it takes
    is published to the TLS Redis stream and confirmed by the consumer."""
    name = f"e2e_{uuid.uuid4().hex[:8]}"
    admin = _pg_url(tls_postgres, f"sslmode=verify-full&sslrootcert={pki.ca}")

    async def create_database() -> None:
        db = Database(admin, pool_size=2, acquire_timeout=5.0)
        try:
            await db.fetch(f"CREATE DATABASE {name}")
        finally:
            db.close()

    asyncio.run(create_database())
    dsn = admin.replace("/postgres?", f"/{name}?")
    proc = ServiceProcess(dsn, tls_redis.verified_url(), "http,worker", name="tls")
    client = redis.Redis.from_url(tls_redis.verified_url())
    try:
        proc.start()
        with httpx.Client(base_url=proc.base_url, timeout=5) as rest:
            ready = settled_ready(rest, 200, timeout=20)
        assert ready.status_code == 200, ready.text
        created = httpx.post(f"{proc.base_url}/orders", json={"product": "book", "quantity": 2}, timeout=5)
        assert created.status_code == 201, created.text
        order_id = created.json()["id"]
        wait_until(
            lambda: httpx.get(f"{proc.base_url}/orders/{order_id}", timeout=5).json()["status"] == "confirmed",
            what="confirmed by the consumer",
        )
        events = [fields[b"event"] for _, fields in client.xrange(proc.stream)]
        assert events[:2] == [b"order.created", b"order.updated"]
    finally:
        proc.stop()
        client.delete(proc.stream, f"{proc.stream}.dlq")
        client.close()
        Path(proc.log_file.name).unlink(missing_ok=True)
