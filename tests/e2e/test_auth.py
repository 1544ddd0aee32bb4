"""AUTH_MODE=jwt over real sockets: bearer tokens on REST and gRPC, each scope rule, the 401/403
shapes, every refused token, owner isolation, events carrying owner and actor, JWKS rotation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import msgspec
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.grpc.pb import orders_pb2, orders_pb2_grpc
from tests.auth_tokens import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    SigningKey,
    hs256_with_public_key,
    unsigned_token,
    write_jwks,
)
from tests.conftest import IsolatedSchema
from tests.e2e.conftest import ServiceProcess, isolated_service, settled_ready
from tests.private_servers import wait_until

if TYPE_CHECKING:
    from tests.conftest import TestServices

pytestmark = pytest.mark.e2e

KEY = SigningKey("k-es", "ES256")
RSA_KEY = SigningKey("k-rs", "RS256")
RW = "orders:read orders:write"
ADMIN = "orders:read orders:write orders:admin"
AUTH_ENV = {"AUTH_MODE": "jwt", "AUTH_ISSUER": ISSUER, "AUTH_AUDIENCE": AUDIENCE}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def jwt_service(
    test_services: TestServices, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, IsolatedSchema]]:
    """All roles with AUTH_MODE=jwt and keys from a JWKS file, shared by the module."""
    jwks_file = write_jwks(tmp_path_factory.mktemp("jwks") / "jwks.json", KEY, RSA_KEY)
    env = {**AUTH_ENV, "AUTH_JWKS_FILE": str(jwks_file)}
    with isolated_service(test_services, "http,grpc,worker", env, wait_for_grpc=True) as (proc, isolated):
        try:
            yield proc, isolated
        finally:
            proc.stop()
            redis.Redis.from_url(test_services.redis_url).delete(proc.stream, f"{proc.stream}.dlq")


@pytest.fixture
def rest(jwt_service: tuple[ServiceProcess, IsolatedSchema]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=jwt_service[0].base_url, timeout=10) as client:
        yield client


@pytest.fixture
def stub(jwt_service: tuple[ServiceProcess, IsolatedSchema]) -> Iterator[orders_pb2_grpc.OrderServiceStub]:
    with grpc.insecure_channel(jwt_service[0].grpc_target) as channel:
        yield orders_pb2_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]


def grpc_code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()  # type: ignore[no-any-return]


def create(rest: httpx.Client, token: str, product: str = "book", **headers: str) -> dict[str, Any]:
    response = rest.post("/orders", json={"product": product, "quantity": 1}, headers={**bearer(token), **headers})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


# ---- open endpoints ---------------------------------------------------------------------------


def test_health_ready_openapi_grpc_health_and_reflection_need_no_token(
    rest: httpx.Client, jwt_service: tuple[ServiceProcess, IsolatedSchema]
) -> None:
    for path in ("/health", "/openapi.json"):
        assert rest.get(path).status_code == 200, path
    assert settled_ready(rest, 200).status_code == 200  # a worker's state is "unknown" until its first check
    document = rest.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["paths"]["/orders/{id}"]["get"]["security"] == [{"bearerAuth": ["orders:read"]}]
    with grpc.insecure_channel(jwt_service[0].grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        wait_until(
            lambda: health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING,
            what="SERVING",
        )
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[no-untyped-call]
        replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for reply in replies for s in reply.list_services_response.service}
        assert "orders.OrderService" in names


# ---- 401 / 403 shapes -------------------------------------------------------------------------


def test_no_token_is_401_with_a_bare_bearer_challenge_before_any_validation(rest: httpx.Client) -> None:
    for method, path, body in (
        ("GET", "/orders", None),
        ("GET", "/orders?limit=abc", None),  # malformed query: still 401, not 400
        ("GET", "/orders/not-an-id", None),
        ("GET", "/orders/changes", None),
        ("GET", "/orders/changes?order_id=not-an-id&after=nonsense", None),
        ("POST", "/orders", b'{"product": '),  # malformed: still 401, not 400
        ("PUT", f"/orders/{uuid.uuid4()}", b"[]"),
        ("DELETE", f"/orders/{uuid.uuid4()}", None),
        ("GET", "/metrics", None),
        ("GET", "/metrics/db", None),
        ("GET", "/metrics/events", None),
    ):
        response = rest.request(method, path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == 401 and problem["type"].endswith("/unauthenticated")


def test_scope_is_checked_before_the_query_is_validated(rest: httpx.Client) -> None:
    """A token without orders:read learns nothing from a malformed list query: 403, never 400."""
    writer = KEY.token("scoped", "orders:write")
    for query in ("limit=abc", "limit=0", "status=", "status=shipped", "cursor=nonsense"):
        response = rest.get(f"/orders?{query}", headers=bearer(writer))
        assert response.status_code == 403, (query, response.text)
        assert response.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="orders:read"'
        assert response.json()["type"].endswith("/insufficient-scope")
    reader = KEY.token("scoped", "orders:read")
    assert rest.get("/orders?limit=abc", headers=bearer(reader)).status_code == 400  # with the scope: validated


def test_every_bad_token_is_401_invalid_token_on_rest_and_unauthenticated_on_grpc(
    rest: httpx.Client, stub: orders_pb2_grpc.OrderServiceStub
) -> None:
    stranger = SigningKey("k-es", "ES256")  # the service's kid, another key
    bad = {
        "malformed": "abc.def",
        "expired": KEY.token(scope=ADMIN, expires_in=-120),
        "not yet valid": KEY.token(scope=ADMIN, not_before_in=300),
        "wrong issuer": KEY.token(scope=ADMIN, iss="https://evil.test/"),
        "wrong audience": KEY.token(scope=ADMIN, aud="another-service"),
        "unknown kid": KEY.token(scope=ADMIN, kid="k-unknown"),
        "alg none": unsigned_token(),
        "HS256 signed with the public key": hs256_with_public_key(KEY),
        "signed by another key": stranger.token(scope=ADMIN),
    }
    for name, token in bad.items():
        response = rest.get("/orders", headers=bearer(token))
        assert response.status_code == 401, name
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer error="invalid_token"'), (name, challenge)
        assert response.headers["content-type"] == "application/problem+json"
        code = grpc_code(lambda t=token: stub.ListOrders(orders_pb2.ListOrdersRequest(), metadata=metadata(t)))
        assert code == grpc.StatusCode.UNAUTHENTICATED, name
    assert grpc_code(lambda: stub.GetOrder(orders_pb2.GetOrderRequest(id="x"))) == grpc.StatusCode.UNAUTHENTICATED


def test_each_scope_rule_on_rest(rest: httpx.Client) -> None:
    order = create(rest, KEY.token("scoped", RW))
    reader, writer = KEY.token("scoped", "orders:read"), KEY.token("scoped", "orders:write")
    assert rest.get(f"/orders/{order['id']}", headers=bearer(reader)).status_code == 200
    assert rest.get("/orders", headers=bearer(reader)).status_code == 200
    refusals = [
        ("POST", "/orders", reader, "orders:write", {"product": "x", "quantity": 1}),
        ("PUT", f"/orders/{order['id']}", reader, "orders:write", {"product": "x", "quantity": 2}),
        ("DELETE", f"/orders/{order['id']}", reader, "orders:write", None),
        ("GET", f"/orders/{order['id']}", writer, "orders:read", None),
        ("GET", "/orders", writer, "orders:read", None),
        ("GET", "/orders/changes", writer, "orders:read", None),
        ("GET", "/metrics", KEY.token("scoped", RW), "orders:admin", None),
        ("GET", "/metrics/db", KEY.token("scoped", RW), "orders:admin", None),
        ("GET", "/metrics/events", KEY.token("scoped", RW), "orders:admin", None),
    ]
    for method, path, token, scope, body in refusals:
        response = rest.request(method, path, json=body, headers=bearer(token))
        assert response.status_code == 403, (method, path)
        assert response.headers["www-authenticate"] == f'Bearer error="insufficient_scope", scope="{scope}"'
        assert response.json()["type"].endswith("/insufficient-scope")
    assert (
        rest.put(f"/orders/{order['id']}", json={"product": "y", "quantity": 2}, headers=bearer(writer)).status_code
        == 200
    )
    assert rest.get("/metrics", headers=bearer(KEY.token("ops", ADMIN))).status_code == 200
    assert rest.get("/metrics/db", headers=bearer(KEY.token("ops", ADMIN))).status_code == 200
    assert rest.get("/metrics/events", headers=bearer(KEY.token("ops", ADMIN))).status_code == 200
    assert rest.delete(f"/orders/{order['id']}", headers=bearer(writer)).status_code == 204


def test_each_scope_rule_on_grpc(stub: orders_pb2_grpc.OrderServiceStub) -> None:
    writer = RSA_KEY.token("grpc-scoped", "orders:write")  # RS256 too
    reader = RSA_KEY.token("grpc-scoped", "orders:read")
    created = stub.CreateOrder(orders_pb2.CreateOrderRequest(product="pen", quantity=1), metadata=metadata(writer))
    order_id = created.order.id
    assert stub.GetOrder(orders_pb2.GetOrderRequest(id=order_id), metadata=metadata(reader)).order.id == order_id
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert (
        grpc_code(lambda: stub.GetOrder(orders_pb2.GetOrderRequest(id=order_id), metadata=metadata(writer))) == denied
    )
    assert grpc_code(lambda: stub.ListOrders(orders_pb2.ListOrdersRequest(), metadata=metadata(writer))) == denied
    create_request = orders_pb2.CreateOrderRequest(product="pen", quantity=1)
    assert grpc_code(lambda: stub.CreateOrder(create_request, metadata=metadata(reader))) == denied
    update = orders_pb2.UpdateOrderRequest(id=order_id, quantity=2)
    assert grpc_code(lambda: stub.UpdateOrder(update, metadata=metadata(reader))) == denied
    assert (
        grpc_code(lambda: stub.DeleteOrder(orders_pb2.DeleteOrderRequest(id=order_id), metadata=metadata(reader)))
        == denied
    )
    stub.DeleteOrder(orders_pb2.DeleteOrderRequest(id=order_id), metadata=metadata(writer))


# ---- owner isolation --------------------------------------------------------------------------


def test_another_owners_order_is_404_exactly_as_if_absent_on_rest(rest: httpx.Client) -> None:
    alice, bob = KEY.token("alice-r", RW), KEY.token("bob-r", RW)
    order = create(rest, alice)
    absent = str(uuid.uuid4())
    for order_id in (order["id"], absent):
        got = rest.get(f"/orders/{order_id}", headers=bearer(bob))
        put = rest.put(f"/orders/{order_id}", json={"product": "stolen", "quantity": 9}, headers=bearer(bob))
        gone = rest.delete(f"/orders/{order_id}", headers=bearer(bob))
        assert [got.status_code, put.status_code, gone.status_code] == [404, 404, 404]
        assert got.json()["detail"] == f"order {order_id} not found"
    listed = rest.get("/orders", headers=bearer(bob)).json()
    assert order["id"] not in {o["id"] for o in listed}
    assert rest.get(f"/orders/{order['id']}", headers=bearer(alice)).json()["product"] == "book"  # untouched
    assert order["id"] in {o["id"] for o in rest.get("/orders", headers=bearer(alice)).json()}
    # an admin sees every owner's
    assert rest.get(f"/orders/{order['id']}", headers=bearer(KEY.token("ops", ADMIN))).status_code == 200


def test_list_pages_hold_only_the_callers_orders(rest: httpx.Client) -> None:
    carol, dave = KEY.token("carol", RW), KEY.token("dave", RW)
    mine = [create(rest, carol, f"c{i}")["id"] for i in range(3)]
    for i in range(3):
        create(rest, dave, f"d{i}")
    seen: list[str] = []
    url: str | None = "/orders?limit=1"
    while url:
        response = rest.get(url, headers=bearer(carol))
        seen += [o["id"] for o in response.json()]
        url = response.links.get("next", {}).get("url")
    assert seen == list(reversed(mine))


def test_idempotency_keys_are_per_owner(rest: httpx.Client) -> None:
    erin, frank = KEY.token("erin", RW), KEY.token("frank", RW)
    key = f"checkout-{uuid.uuid4()}"
    first = create(rest, erin, "book", **{"Idempotency-Key": key})
    other = create(rest, frank, "pen", **{"Idempotency-Key": key})
    assert other["id"] != first["id"] and other["product"] == "pen"
    replay = rest.post(
        "/orders", json={"product": "book", "quantity": 1}, headers={**bearer(erin), "Idempotency-Key": key}
    )
    assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == first["id"]


def test_owner_isolation_on_grpc(stub: orders_pb2_grpc.OrderServiceStub) -> None:
    grace, heidi = KEY.token("grace", RW), KEY.token("heidi", RW)
    order = stub.CreateOrder(orders_pb2.CreateOrderRequest(product="ink", quantity=1), metadata=metadata(grace)).order
    not_found = grpc.StatusCode.NOT_FOUND
    assert (
        grpc_code(lambda: stub.GetOrder(orders_pb2.GetOrderRequest(id=order.id), metadata=metadata(heidi))) == not_found
    )
    update = orders_pb2.UpdateOrderRequest(id=order.id, quantity=5)
    assert grpc_code(lambda: stub.UpdateOrder(update, metadata=metadata(heidi))) == not_found
    delete = orders_pb2.DeleteOrderRequest(id=order.id)
    assert grpc_code(lambda: stub.DeleteOrder(delete, metadata=metadata(heidi))) == not_found
    listed = stub.ListOrders(orders_pb2.ListOrdersRequest(), metadata=metadata(heidi)).orders
    assert order.id not in {o.id for o in listed}
    assert order.id in {o.id for o in stub.ListOrders(orders_pb2.ListOrdersRequest(), metadata=metadata(grace)).orders}
    key = (("x-idempotency-key", "grpc-key-1"),)
    a = stub.CreateOrder(orders_pb2.CreateOrderRequest(product="a", quantity=1), metadata=metadata(grace) + key)
    b = stub.CreateOrder(orders_pb2.CreateOrderRequest(product="b", quantity=1), metadata=metadata(heidi) + key)
    assert a.order.id != b.order.id


# ---- events -----------------------------------------------------------------------------------


def test_events_carry_owner_and_actor(
    rest: httpx.Client, jwt_service: tuple[ServiceProcess, IsolatedSchema], test_services: TestServices
) -> None:
    proc = jwt_service[0]
    ivan = KEY.token("ivan", RW)
    order = create(rest, ivan)
    wait_until(
        lambda: rest.get(f"/orders/{order['id']}", headers=bearer(ivan)).json()["status"] == "confirmed",
        what="confirmed by the consumer",
    )
    # an admin cancels it: the event keeps the owner and names the admin as actor
    ops = KEY.token("ops-1", ADMIN)
    cancelled = rest.put(
        f"/orders/{order['id']}", json={"product": "book", "quantity": 1, "status": "cancelled"}, headers=bearer(ops)
    )
    assert cancelled.status_code == 200
    client = redis.Redis.from_url(test_services.redis_url)

    def events() -> list[dict[str, str]]:
        raw: Any = client.xrange(proc.stream)
        found = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw]
        return [f for f in found if msgspec.json.decode(f["payload"])["id"] == order["id"]]

    wait_until(lambda: len(events()) >= 3, what="three events")
    assert [(e["event"], e["owner"], e["actor"]) for e in events()] == [
        ("order.created", "ivan", "ivan"),
        ("order.updated", "ivan", "system:orders-consumer"),
        ("order.updated", "ivan", "ops-1"),
    ]


# ---- JWKS from a URL, rotated without a restart -----------------------------------------------


def test_jwks_rotation_through_the_url_without_a_restart(
    test_services: TestServices, service_schema: IsolatedSchema, tmp_path: Path
) -> None:
    old, new = SigningKey("k-old", "EdDSA"), SigningKey("k-new", "ES256")
    jwks = JwksServer(old)
    env = {**AUTH_ENV, "AUTH_JWKS_URL": jwks.url, "AUTH_JWKS_REFRESH": "2"}
    proc = ServiceProcess(service_schema.dsn, test_services.redis_url, "http,grpc", env)
    try:
        proc.start(wait_for_grpc=True)
        with httpx.Client(base_url=proc.base_url, timeout=10) as rest:
            assert rest.get("/orders", headers=bearer(old.token())).status_code == 200
            assert rest.get("/orders", headers=bearer(new.token())).status_code == 401
            jwks.publish(old, new)  # the issuer adds its next key...
            wait_until(lambda: rest.get("/orders", headers=bearer(new.token())).status_code == 200, what="new key")
            with grpc.insecure_channel(proc.grpc_target) as channel:
                stub = orders_pb2_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]

                def grpc_accepts() -> bool:
                    try:
                        stub.ListOrders(orders_pb2.ListOrdersRequest(), metadata=metadata(new.token()))
                    except grpc.RpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                        return False
                    return True

                wait_until(grpc_accepts, what="the new key on gRPC")
            jwks.publish(new)  # ...and withdraws the old one: its tokens stop working, cached or not
            wait_until(lambda: rest.get("/orders", headers=bearer(old.token())).status_code == 401, what="old key out")
            assert rest.get("/orders", headers=bearer(new.token())).status_code == 200
    finally:
        proc.stop()
        jwks.close()


def test_an_unknown_kid_refreshes_early(test_services: TestServices, service_schema: IsolatedSchema) -> None:
    first, second = SigningKey("k-1", "ES256"), SigningKey("k-2", "ES256")
    jwks = JwksServer(first)
    env = {**AUTH_ENV, "AUTH_JWKS_URL": jwks.url, "AUTH_JWKS_REFRESH": "3600", "HTTP_WORKERS": "1"}
    proc = ServiceProcess(service_schema.dsn, test_services.redis_url, "http", env)
    try:
        proc.start()
        with httpx.Client(base_url=proc.base_url, timeout=10) as rest:
            jwks.publish(first, second)
            token = second.token()
            # the first call names an unknown kid: refused, and the keys are refreshed in the background
            assert rest.get("/orders", headers=bearer(token)).status_code == 401
            wait_until(lambda: rest.get("/orders", headers=bearer(token)).status_code == 200, what="early refresh")
    finally:
        proc.stop()
        jwks.close()


def test_a_bad_auth_setting_stops_the_service_naming_the_variable(
    test_services: TestServices, service_schema: IsolatedSchema, tmp_path: Path
) -> None:
    bad_jwks = tmp_path / "jwks.json"
    bad_jwks.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}')  # HMAC only: refused
    for env, variable in (
        ({"AUTH_MODE": "jwt"}, "AUTH_ISSUER"),
        ({**AUTH_ENV, "AUTH_JWKS_FILE": str(bad_jwks)}, "AUTH_JWKS_FILE"),
        ({**AUTH_ENV, "AUTH_JWKS_FILE": str(tmp_path / "missing.json")}, "AUTH_JWKS_FILE"),
    ):
        proc = ServiceProcess(service_schema.dsn, test_services.redis_url, "http", env)
        with pytest.raises(RuntimeError, match=variable):
            proc.start(timeout=15)


def test_malformed_protobuf_is_unauthenticated_before_it_is_invalid(
    jwt_service: tuple[ServiceProcess, IsolatedSchema],
) -> None:
    """Raw bytes that are no GetOrderRequest: without a token UNAUTHENTICATED, with one INVALID_ARGUMENT."""
    with grpc.insecure_channel(jwt_service[0].grpc_target) as channel:
        raw = channel.unary_unary("/orders.OrderService/GetOrder")  # bytes in, bytes out
        garbage = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, a length far past the end
        assert grpc_code(lambda: raw(garbage, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        token = KEY.token(scope="orders:read")
        assert grpc_code(lambda: raw(garbage, metadata=metadata(token), timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
