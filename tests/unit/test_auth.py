"""Bearer-token verification, scopes and owner isolation, without I/O (in-memory keys and store)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from service.access import RequestContext
from service.auth.keys import JwksError, KeyRing, parse_jwks
from service.auth.verifier import JwtAuthenticator
from service.config import ConfigError, load_settings
from service.domain import (
    SCOPE_ADMIN,
    SCOPE_READ,
    SCOPE_WRITE,
    SYSTEM,
    IdempotencyKeyReused,
    OrderNotFound,
    PermissionDenied,
    Principal,
    Unauthenticated,
)
from tests.auth_tokens import AUDIENCE, ISSUER, SigningKey, hs256_with_public_key, jwks, unsigned_token
from tests.unit.fakes import make_service

KEY = SigningKey("k1", "ES256")


def ring(*keys: SigningKey, clock: Any = None) -> KeyRing:
    raw = json.dumps(jwks(*keys)).encode()
    kwargs = {"clock": clock} if clock is not None else {}
    return KeyRing(lambda: raw, 300, keys=parse_jwks(raw), **kwargs)


def authenticator(keys: KeyRing | None = None, **kwargs: Any) -> JwtAuthenticator:
    return JwtAuthenticator(keys or ring(KEY), issuer=ISSUER, audience=AUDIENCE, leeway=30, **kwargs)


def refused(auth: JwtAuthenticator, header: str | None) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as caught:
        auth.authenticate(header)
    return caught.value


@pytest.mark.parametrize("algorithm", ["ES256", "RS256", "EdDSA"])
def test_a_valid_token_gives_its_owner_subject_and_scopes(algorithm: str) -> None:
    key = SigningKey("k-" + algorithm, algorithm)
    principal = authenticator(ring(key)).authenticate(f"Bearer {key.token('alice', 'orders:read other')}")
    assert principal == Principal(owner="alice", actor="alice", scopes=frozenset({"orders:read", "other"}))


def test_scp_list_and_the_owner_claim() -> None:
    auth = authenticator(owner_claim="tenant")
    token = KEY.token("svc-1", None, scp=["orders:read", "orders:write"], tenant="acme")
    assert auth.authenticate(f"bearer {token}") == Principal(
        owner="acme", actor="svc-1", scopes=frozenset({"orders:read", "orders:write"})
    )
    assert refused(auth, f"Bearer {KEY.token('svc-1')}").invalid_token  # no tenant claim


@pytest.mark.parametrize("header", [None, "", "Basic YWxpY2U6cHc=", "Token abc"])
def test_no_bearer_token_is_a_challenge_without_error_code(header: str | None) -> None:
    assert not refused(authenticator(), header).invalid_token


def test_every_bad_token_is_refused_as_invalid() -> None:
    other = SigningKey("k1", "ES256")  # same kid, another key: bad signature
    auth = authenticator()
    bad = {
        "malformed": "not-a-jwt",
        "empty": "",
        "expired": KEY.token(expires_in=-60),
        "not yet valid": KEY.token(not_before_in=120),
        "wrong issuer": KEY.token(iss="https://evil.test/"),
        "wrong audience": KEY.token(aud="someone-else"),
        "unknown kid": KEY.token(kid="k-unknown"),
        "alg none": unsigned_token(),
        "HS256 with the public key": hs256_with_public_key(KEY),
        "bad signature": other.token(),
        "no exp": KEY.token(omit=("exp",)),
        "no sub": KEY.token(omit=("sub",)),
        "huge": "x" * 10_000,
    }
    for name, token in bad.items():
        error = refused(auth, f"Bearer {token}")
        assert error.invalid_token, name
        assert '"' not in error.detail and "\\" not in error.detail, name  # safe inside the challenge


def test_leeway_accepts_a_token_just_expired() -> None:
    assert authenticator().authenticate(f"Bearer {KEY.token(expires_in=-10)}").owner == "alice"


def test_verified_tokens_are_cached_until_they_expire_or_their_key_goes() -> None:
    now = [1_000_000.0]
    keys = ring(KEY)
    auth = authenticator(keys, clock=lambda: now[0])
    import time as _time

    token = KEY.token(expires_in=100)
    header = f"Bearer {token}"
    first = auth.authenticate(header)
    now[0] = _time.time()
    assert auth.authenticate(header) is first  # from the cache
    # the key is withdrawn from the JWKS: the cached token goes with it
    keys.keys = {}
    assert refused(auth, header).invalid_token


def test_an_unknown_kid_asks_for_one_early_refresh_a_minute() -> None:
    now = [0.0]

    async def scenario() -> int:
        keys = ring(KEY, clock=lambda: now[0])
        refreshes = 0

        async def refresh() -> bool:
            nonlocal refreshes
            refreshes += 1
            return True

        keys.refresh = refresh  # type: ignore[method-assign]
        task = asyncio.create_task(keys.run())
        await asyncio.sleep(0)
        auth = authenticator(keys)
        for _ in range(5):
            refused(auth, f"Bearer {KEY.token(kid='new')}")
            await asyncio.sleep(0.01)
        now[0] = 61.0
        refused(auth, f"Bearer {KEY.token(kid='new')}")
        await asyncio.sleep(0.01)
        task.cancel()
        return refreshes

    assert asyncio.run(scenario()) == 2


def test_jwks_keeps_only_asymmetric_signing_keys() -> None:
    rsa_key = SigningKey("r", "RS256")
    document = {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h", "alg": "HS256"}, rsa_key.jwk]}
    assert set(parse_jwks(json.dumps(document).encode())) == {"r"}
    with pytest.raises(JwksError):
        parse_jwks(b'{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}')
    with pytest.raises(JwksError):
        parse_jwks(b"[]")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"AUTH_MODE": "jwt"}, "AUTH_ISSUER"),
        ({"AUTH_MODE": "jwt", "AUTH_ISSUER": "i"}, "AUTH_AUDIENCE"),
        ({"AUTH_MODE": "jwt", "AUTH_ISSUER": "i", "AUTH_AUDIENCE": "a"}, "AUTH_JWKS_FILE"),
        ({"AUTH_MODE": "oauth"}, "AUTH_MODE"),
        ({"AUTH_JWKS_URL": "ftp://x/jwks"}, "AUTH_JWKS_URL"),
        ({"AUTH_LEEWAY": "-1"}, "AUTH_LEEWAY"),
        ({"AUTH_JWKS_REFRESH": "0"}, "AUTH_JWKS_REFRESH"),
        ({"TLS_CERT_FILE": "/c.pem"}, "TLS_KEY_FILE"),
        ({"TLS_CLIENT_CA_FILE": "/ca.pem"}, "TLS_CLIENT_CA_FILE"),
    ],
)
def test_bad_auth_and_tls_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings(env)


# ---- authorization: the service layer's rules -----------------------------------------------


def ctx(owner: str, *scopes: str) -> RequestContext:
    return RequestContext(principal=Principal(owner=owner, actor=f"{owner}-sub", scopes=frozenset(scopes)))


ALICE = ctx("alice", SCOPE_READ, SCOPE_WRITE)
BOB = ctx("bob", SCOPE_READ, SCOPE_WRITE)
ADMIN = ctx("ops", SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN)
READER = ctx("alice", SCOPE_READ)


async def test_each_operation_needs_its_scope_before_anything_is_validated() -> None:
    service, _, _ = make_service()
    order = (await service.create("book", 1, ctx=ALICE)).order
    no_scopes = ctx("alice")
    checks = [
        (service.get("not-an-id", ctx=no_scopes), SCOPE_READ),
        (service.list(limit=-1, ctx=no_scopes), SCOPE_READ),
        (service.create("", 0, ctx=READER), SCOPE_WRITE),
        (service.update(str(order.id), quantity=0, ctx=READER), SCOPE_WRITE),
        (service.delete(str(order.id), ctx=READER), SCOPE_WRITE),
    ]
    for call, scope in checks:
        with pytest.raises(PermissionDenied) as caught:
            await call
        assert caught.value.scope == scope
    assert (await service.get(str(order.id), ctx=READER)).id == order.id


async def test_another_owners_order_is_not_found_and_lists_hold_only_the_callers() -> None:
    service, store, _ = make_service()
    mine = (await service.create("book", 1, ctx=ALICE)).order
    theirs = (await service.create("pen", 2, ctx=BOB)).order
    for call in (
        service.get(str(theirs.id), ctx=ALICE),
        service.update(str(theirs.id), quantity=5, ctx=ALICE),
        service.delete(str(theirs.id), ctx=ALICE),
    ):
        with pytest.raises(OrderNotFound):
            await call
    assert [o.id for o in (await service.list(ctx=ALICE)).orders] == [mine.id]
    assert [o.id for o in (await service.list(ctx=BOB)).orders] == [theirs.id]
    # an admin sees and changes everyone's; the event keeps the order's owner and names the admin
    assert {o.id for o in (await service.list(ctx=ADMIN)).orders} == {mine.id, theirs.id}
    await service.update(str(theirs.id), quantity=3, ctx=ADMIN)
    assert (store.outbox[-1].owner, store.outbox[-1].actor) == ("bob", "ops-sub")
    assert (await service.get(str(theirs.id), ctx=BOB)).quantity == 3


async def test_pages_of_one_owner_never_hold_anothers_orders() -> None:
    service, _, _ = make_service()
    for i in range(5):
        await service.create(f"a{i}", 1, ctx=ALICE)
        await service.create(f"b{i}", 1, ctx=BOB)
    seen: list[str] = []
    cursor = None
    while True:
        page = await service.list(limit=2, cursor=cursor, ctx=ALICE)
        seen += [o.product for o in page.orders]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [f"a{i}" for i in reversed(range(5))]


async def test_idempotency_keys_are_per_owner() -> None:
    service, _, _ = make_service()
    first = await service.create("book", 1, idempotency_key="k-1", ctx=ALICE)
    other = await service.create("pen", 9, idempotency_key="k-1", ctx=BOB)
    assert not other.replayed and other.order.id != first.order.id
    replay = await service.create("book", 1, idempotency_key="k-1", ctx=ALICE)
    assert replay.replayed and replay.order.id == first.order.id
    with pytest.raises(IdempotencyKeyReused):
        await service.create("pen", 9, idempotency_key="k-1", ctx=ALICE)


async def test_events_carry_owner_and_actor_and_the_consumer_confirms_as_system() -> None:
    service, store, _ = make_service()
    order = (await service.create("book", 1, ctx=ALICE)).order
    assert await service.confirm(str(order.id), ctx=RequestContext(principal=SYSTEM))
    assert [(e.owner, e.actor) for e in store.outbox] == [("alice", "alice-sub"), ("alice", SYSTEM.actor)]


def test_openapi_declares_the_bearer_scheme_and_each_operations_scope() -> None:
    from service.http.api import OPEN_PATHS
    from service.http.openapi import build_openapi

    document = build_openapi()
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": document["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    operations = {
        (path, method): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }
    expected = {
        ("/orders", "post"): [{"bearerAuth": ["orders:write"]}],
        ("/orders", "get"): [{"bearerAuth": ["orders:read"]}],
        ("/orders/changes", "get"): [{"bearerAuth": ["orders:read"]}],
        ("/orders/{id}", "get"): [{"bearerAuth": ["orders:read"]}],
        ("/orders/{id}", "put"): [{"bearerAuth": ["orders:write"]}],
        ("/orders/{id}", "delete"): [{"bearerAuth": ["orders:write"]}],
        ("/metrics", "get"): [{"bearerAuth": ["orders:admin"]}],
        ("/metrics/db", "get"): [{"bearerAuth": ["orders:admin"]}],
        ("/metrics/events", "get"): [{"bearerAuth": ["orders:admin"]}],
        ("/health", "get"): [],
        ("/ready", "get"): [],
        ("/openapi.json", "get"): [],
    }
    assert operations.keys() == expected.keys()  # every operation of the document is checked
    for (path, method), security in expected.items():
        operation = operations[(path, method)]
        assert operation["security"] == security, (path, method)
        assert ("401" in operation["responses"]) == bool(security)
        assert ("403" in operation["responses"]) == bool(security)
        assert (security == []) == (path in OPEN_PATHS), (path, method)  # as the REST API enforces it
    # AUTH_MODE=none: nothing needs credentials, and the document does not claim otherwise
    open_document = build_openapi(secured=False)
    assert "securitySchemes" not in open_document["components"]
    assert all("security" not in op for item in open_document["paths"].values() for op in item.values())


def test_an_operation_declared_neither_open_nor_scoped_is_refused() -> None:
    """A new route forgotten in OPERATION_SCOPES must not be published as open."""
    from service.http.openapi import _secure

    with pytest.raises(KeyError, match="newOperation"):
        _secure({"/new": {"get": {"operationId": "newOperation", "responses": {}}}})


def test_dev_keys_and_dev_token_make_a_token_the_service_accepts(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.auth.keys import file_loader, load_keys
    from service.cli import main

    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert main(["dev-keys"]) == 0
    jwks_file = tmp_path / "auth" / "jwks.json"
    assert (tmp_path / "auth" / "signing-key.pem").stat().st_mode & 0o077 == 0  # private
    assert main(["dev-token", "--sub", "alice", "--scope", "orders:read orders:write"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    keys = load_keys(file_loader(str(jwks_file)))
    auth = JwtAuthenticator(
        KeyRing(file_loader(str(jwks_file)), 300, keys=keys), issuer="orders-service-dev", audience="orders-service"
    )
    assert auth.authenticate(f"Bearer {token}") == Principal(
        owner="alice", actor="alice", scopes=frozenset({"orders:read", "orders:write"})
    )
    assert main(["dev-keys"]) == 0 and load_keys(file_loader(str(jwks_file))).keys() == keys.keys()  # kept


async def test_over_rest_a_reader_learns_nothing_from_a_malformed_write() -> None:
    """403 before the body or If-Match is read: a caller without orders:write never sees a 400."""
    from service.http.api import HttpRequest, RestApi

    service, _, _ = make_service()
    reader_token = KEY.token("alice", "orders:read")
    api = RestApi(
        service, json_endpoints={}, openapi_document=b"{}", max_body_bytes=1024, authenticator=authenticator()
    )
    headers = {"authorization": f"Bearer {reader_token}", "content-type": "application/json", "if-match": "nonsense"}
    order_path = "/orders/0190abcd-0000-7000-8000-000000000001"
    for method, path, body in (
        ("POST", "/orders", b"{not json"),
        ("PUT", order_path, b"{"),
        ("DELETE", order_path, b""),
    ):
        response = await api.handle(HttpRequest(method, path, "", headers, body))
        assert response.status == 403, (method, response.body)
        assert b"insufficient" in response.body


async def test_over_rest_a_writer_learns_nothing_from_a_malformed_read() -> None:
    """403 before the query or id is parsed: a caller without orders:read never sees a 400 or 404."""
    from service.http.api import HttpRequest, RestApi

    service, _, _ = make_service()
    writer_token = KEY.token("alice", "orders:write")
    api = RestApi(
        service, json_endpoints={}, openapi_document=b"{}", max_body_bytes=1024, authenticator=authenticator()
    )
    headers = {"authorization": f"Bearer {writer_token}"}
    for path, query in (
        ("/orders", "limit=abc"),
        ("/orders", "limit=0&status=&cursor=nonsense"),
        ("/orders/not-an-id", ""),
        ("/orders/changes", "order_id=not-an-id&after=nonsense"),
    ):
        response = await api.handle(HttpRequest("GET", path, query, headers))
        assert response.status == 403, (path, query, response.body)
        assert b"insufficient" in response.body


@pytest.mark.parametrize(("bind", "warned"), [("0.0.0.0", True), ("10.1.2.3", True), ("127.0.0.1", False)])
def test_auth_none_beyond_loopback_is_warned_at_start(
    bind: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    from service.cli import _check_start

    with caplog.at_level(logging.WARNING, logger="orders.cli"):
        _check_start(load_settings({"AUTH_MODE": "none", "BIND": bind}))
    warnings = [record for record in caplog.records if "AUTH_MODE=none" in record.getMessage()]
    assert bool(warnings) is warned
    if warned:
        assert "beyond loopback" in warnings[0].getMessage() and warnings[0].bind == bind  # type: ignore[attr-defined]
