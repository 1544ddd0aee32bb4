"""Every REST route and error case, against the real `orders-service serve` over HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import httpx
import pytest

from tests.e2e.conftest import ServiceProcess, settled_ready

JSON_HEADERS = {"content-type": "application/json"}


@pytest.fixture
def api(module_service: ServiceProcess) -> httpx.Client:
    with httpx.Client(base_url=module_service.base_url, timeout=10) as client:
        yield client  # type: ignore[misc]


def create(api: httpx.Client, product: str = "book", quantity: int = 1, **headers: str) -> httpx.Response:
    return api.post("/orders", json={"product": product, "quantity": quantity}, headers=headers)


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "request_id"} <= body.keys()
    assert body["request_id"] == response.headers["x-request-id"]
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body  # type: ignore[no-any-return]


def test_create_returns_201_with_location_etag_and_order(api: httpx.Client) -> None:
    response = create(api, "  widget  ", 3)
    assert response.status_code == 201
    order = response.json()
    assert set(order) == {"id", "product", "quantity", "status", "version", "created_at", "updated_at"}
    assert (order["product"], order["quantity"], order["status"], order["version"]) == ("  widget  ", 3, "pending", 1)
    assert uuid.UUID(order["id"]).version == 7
    assert response.headers["location"] == f"/orders/{order['id']}"
    assert response.headers["etag"] == '"1"'
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", order["created_at"])


def test_get_returns_the_order_with_etag(api: httpx.Client) -> None:
    order = create(api).json()
    response = api.get(f"/orders/{order['id']}")
    assert response.status_code == 200
    assert response.json() == order
    assert response.headers["etag"] == '"1"'


@pytest.mark.parametrize("order_id", ["not-a-uuid", str(uuid.uuid4()), "0" * 36, "%00", "x" * 500])
def test_get_unknown_or_malformed_id_is_404(api: httpx.Client, order_id: str) -> None:
    assert_problem(api.get(f"/orders/{order_id}"), 404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"product": "a", "quantity": 1', "body"),
        ("not json", "body"),
        ("", "body"),
        ("[]", "body"),
        ('{"product": 5, "quantity": 1}', "product"),
        ('{"product": "a", "quantity": "1"}', "quantity"),
        ('{"product": "a", "quantity": 1.5}', "quantity"),
        ('{"product": "a", "quantity": true}', "quantity"),
        ('{"product": "a"}', "quantity"),
        ('{"quantity": 1}', "product"),
        ('{"product": "a", "quantity": 1, "price": 3}', "price"),
        ('{"product": "", "quantity": 1}', "product"),
        ('{"product": "   ", "quantity": 1}', "product"),
        ('{"product": "' + "x" * 256 + '", "quantity": 1}', "product"),
        ('{"product": "a", "quantity": 0}', "quantity"),
        ('{"product": "a", "quantity": 1000001}', "quantity"),
        ('{"product": "a", "quantity": 99999999999999999999999999}', "quantity"),
        ('{"product": null, "quantity": 1}', "product"),
    ],
)
def test_create_rejects_bad_bodies_naming_the_field(api: httpx.Client, body: str, field: str) -> None:
    assert_problem(api.post("/orders", content=body, headers=JSON_HEADERS), 400, field)


def test_body_over_64_kib_is_413(api: httpx.Client) -> None:
    body = json.dumps({"product": "a", "quantity": 1, "pad": "x" * 70_000})
    assert_problem(api.post("/orders", content=body, headers=JSON_HEADERS), 413)

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(80):
            yield b"x" * 1024

    assert_problem(api.post("/orders", content=chunks(), headers=JSON_HEADERS), 413)


def test_non_json_content_type_is_415(api: httpx.Client) -> None:
    response = api.post("/orders", content="product=a&quantity=1", headers={"content-type": "text/plain"})
    assert_problem(response, 415)


def test_a_body_without_content_type_is_415_for_post_and_put(api: httpx.Client) -> None:
    """A POST without Content-Type needs no CORS preflight: it must not be taken as JSON."""
    body = b'{"product": "no type", "quantity": 1}'
    assert_problem(api.post("/orders", content=body), 415)
    order = create(api).json()
    assert_problem(api.put(f"/orders/{order['id']}", content=body), 415)
    assert api.get(f"/orders/{order['id']}").json()["version"] == 1  # nothing changed


def test_unknown_methods_add_no_metric_series(api: httpx.Client) -> None:
    for n in range(20):
        api.request(f"M{n}", "/orders")
    metrics = api.get("/metrics").text
    assert 'method="_OTHER"' in metrics
    assert not re.search(r'method="M\d+"', metrics)


def test_unknown_path_is_404_and_wrong_method_is_405_with_allow(api: httpx.Client) -> None:
    assert_problem(api.get("/nope"), 404)
    assert_problem(api.get("/orders/a/b"), 404)
    response = api.patch("/orders")
    assert_problem(response, 405)
    assert response.headers["allow"] == "GET, POST"
    order = create(api).json()
    response = api.post(f"/orders/{order['id']}", json={})
    assert_problem(response, 405)
    assert response.headers["allow"] == "GET, PUT, DELETE"
    assert api.delete("/health").headers["allow"] == "GET"


def test_update_changes_fields_and_bumps_version(api: httpx.Client) -> None:
    order = create(api).json()
    response = api.put(f"/orders/{order['id']}", json={"product": "pen", "quantity": 5})
    assert response.status_code == 200
    updated = response.json()
    assert (updated["product"], updated["quantity"], updated["status"], updated["version"]) == ("pen", 5, "pending", 2)
    assert response.headers["etag"] == '"2"'
    assert updated["updated_at"] >= order["updated_at"]


@pytest.mark.parametrize(
    ("path", "target", "expected"),
    [
        ([], "confirmed", 200),
        ([], "cancelled", 200),
        (["confirmed"], "cancelled", 200),
        (["confirmed"], "pending", 409),
        (["cancelled"], "pending", 409),
        (["cancelled"], "confirmed", 409),
        (["confirmed"], "confirmed", 200),
    ],
)
def test_status_transitions(api: httpx.Client, path: list[str], target: str, expected: int) -> None:
    order = create(api).json()
    for status in path:
        assert api.put(f"/orders/{order['id']}", json={"product": "book", "quantity": 1, "status": status}).is_success
    response = api.put(f"/orders/{order['id']}", json={"product": "book", "quantity": 1, "status": target})
    if expected == 200:
        assert response.status_code == 200 and response.json()["status"] == target
    else:
        assert_problem(response, 409)


def test_update_errors(api: httpx.Client) -> None:
    order = create(api).json()
    url = f"/orders/{order['id']}"
    assert_problem(api.put(url, json={"product": "a", "quantity": 1, "status": "shipped"}), 400, "status")
    assert_problem(api.put(url, json={"product": "a"}), 400, "quantity")
    assert_problem(api.put(url, json={"product": "a", "quantity": 1, "x": 1}), 400, "x")
    assert_problem(api.put(f"/orders/{uuid.uuid4()}", json={"product": "a", "quantity": 1}), 404)
    assert_problem(api.put("/orders/bad-id", json={"product": "a", "quantity": 1}), 404)


def test_if_match_guards_update_and_delete(api: httpx.Client) -> None:
    order = create(api).json()
    url = f"/orders/{order['id']}"
    ok = api.put(url, json={"product": "a", "quantity": 2}, headers={"if-match": '"1"'})
    assert ok.status_code == 200 and ok.headers["etag"] == '"2"'
    assert_problem(api.put(url, json={"product": "a", "quantity": 3}, headers={"if-match": '"1"'}), 412)
    assert_problem(api.put(url, json={"product": "a", "quantity": 3}, headers={"if-match": "garbage"}), 400, "If-Match")
    assert api.put(url, json={"product": "a", "quantity": 3}, headers={"if-match": "*"}).status_code == 200
    assert_problem(api.delete(url, headers={"if-match": '"1"'}), 412)
    assert api.delete(url, headers={"if-match": '"3"'}).status_code == 204


def test_delete_then_404(api: httpx.Client) -> None:
    order = create(api).json()
    response = api.delete(f"/orders/{order['id']}")
    assert response.status_code == 204 and response.content == b""
    assert_problem(api.get(f"/orders/{order['id']}"), 404)
    assert_problem(api.delete(f"/orders/{order['id']}"), 404)
    assert_problem(api.delete("/orders/not-a-uuid"), 404)


def _next_link(response: httpx.Response) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, link
    return match.group(1)


def test_list_is_newest_first_with_link_pagination_and_status_filter(api: httpx.Client) -> None:
    marker = f"list-{uuid.uuid4().hex[:6]}"
    ids = [create(api, marker).json()["id"] for _ in range(5)]
    api.put(f"/orders/{ids[0]}", json={"product": marker, "quantity": 1, "status": "cancelled"})
    first = api.get("/orders", params={"limit": 2})
    assert first.status_code == 200
    assert [o["id"] for o in first.json()] == ids[::-1][:2]
    seen: list[str] = []
    url: str | None = "/orders?limit=2&status=pending"
    while url:
        page = api.get(url)
        seen += [o["id"] for o in page.json() if o["product"] == marker]
        url = _next_link(page)
    assert seen == ids[1:][::-1]
    cancelled = api.get("/orders", params={"status": "cancelled"}).json()
    assert ids[0] in [o["id"] for o in cancelled]
    assert all(o["status"] == "cancelled" for o in cancelled)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"cursor": "bogus"}, "cursor"),
        ({"status": "shipped"}, "status"),
    ],
)
def test_list_rejects_bad_parameters(api: httpx.Client, params: dict[str, str], field: str) -> None:
    assert_problem(api.get("/orders", params=params), 400, field)


async def test_pagination_under_concurrent_inserts_never_skips_or_repeats(module_service: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=module_service.base_url, timeout=10) as client:
        before = set()
        for _ in range(30):
            r = await client.post("/orders", json={"product": "paging", "quantity": 1})
            before.add(r.json()["id"])
        stop = asyncio.Event()

        async def insert_continuously() -> None:
            while not stop.is_set():
                await client.post("/orders", json={"product": "paging-concurrent", "quantity": 1})

        inserters = [asyncio.create_task(insert_continuously()) for _ in range(4)]
        try:
            seen: list[str] = []
            url: str | None = "/orders?limit=7"
            while url:
                page = await client.get(url)
                assert page.status_code == 200
                seen += [o["id"] for o in page.json()]
                url = _next_link(page)
        finally:
            stop.set()
            await asyncio.gather(*inserters)
        assert len(seen) == len(set(seen)), "an order was repeated"
        assert before <= set(seen), "an order that existed before paging was skipped"


async def test_concurrent_conflicting_puts_exactly_one_wins(module_service: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=module_service.base_url, timeout=10) as client:
        order = (await client.post("/orders", json={"product": "race", "quantity": 1})).json()
        responses = await asyncio.gather(
            *(
                client.put(
                    f"/orders/{order['id']}",
                    json={"product": "race", "quantity": q},
                    headers={"if-match": '"1"'},
                )
                for q in range(2, 12)
            )
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [200] + [412] * 9
        final = (await client.get(f"/orders/{order['id']}")).json()
        winner = next(r for r in responses if r.status_code == 200).json()
        assert final == winner and final["version"] == 2


async def test_concurrent_puts_without_if_match_all_apply(module_service: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=module_service.base_url, timeout=10) as client:
        order = (await client.post("/orders", json={"product": "many", "quantity": 1})).json()
        responses = await asyncio.gather(
            *(client.put(f"/orders/{order['id']}", json={"product": "many", "quantity": q}) for q in range(2, 17))
        )
        assert all(r.status_code == 200 for r in responses)
        assert sorted(r.json()["version"] for r in responses) == list(range(2, 17))


def test_request_id_is_taken_or_generated(api: httpx.Client, module_service: ServiceProcess) -> None:
    mine = f"trace-{uuid.uuid4().hex}"
    response = create(api, **{"x-request-id": mine})
    assert response.headers["x-request-id"] == mine
    for bad in ["", "x" * 129, "has space"]:
        generated = api.get("/health", headers={"x-request-id": bad}).headers["x-request-id"]
        assert generated != bad and 1 <= len(generated) <= 128
    lines = [json.loads(line) for line in module_service.logs().splitlines() if line.startswith("{")]
    mine_lines = [line for line in lines if line.get("request_id") == mine]
    assert mine_lines, "no log line carries the request id"
    access = [line for line in mine_lines if line.get("message") == "request"]
    assert access and {"time", "level", "method", "path", "status", "duration_ms"} <= access[0].keys()
    assert access[0]["status"] == 201


def test_health_ready_metrics_and_openapi(api: httpx.Client) -> None:
    assert api.get("/health").json() == {"status": "ok"}
    ready = settled_ready(api, 200)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}
    pool = api.get("/metrics/db").json()
    assert {"size", "max_size", "in_use", "idle", "waiting", "waits_total"} <= pool.keys()
    doc = api.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert {"/orders", "/orders/{id}", "/health", "/ready", "/metrics/db", "/openapi.json"} <= doc["paths"].keys()
    assert {"get", "post"} <= doc["paths"]["/orders"].keys()
    assert {"get", "put", "delete"} <= doc["paths"]["/orders/{id}"].keys()
    assert doc["components"]["schemas"]["CreateOrderBody"]["properties"]["quantity"]["maximum"] == 1_000_000


def test_database_unreachable_gives_503_with_retry_after(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service(DATABASE_URL="postgresql://postgres@127.0.0.1:1/none", MIGRATE_ON_START="false")
    with httpx.Client(base_url=service.base_url, timeout=10) as client:
        for response in (
            client.get(f"/orders/{uuid.uuid4()}"),
            client.post("/orders", json={"product": "a", "quantity": 1}),
            client.get("/orders"),
        ):
            assert_problem(response, 503)
            assert response.headers["retry-after"]
        ready = settled_ready(client, 503)
        assert ready.status_code == 503
        assert ready.json()["checks"]["postgres"] == "unavailable"
        assert "retry-after" in ready.headers
        assert client.get("/health").status_code == 200


def test_a_failing_redis_is_reported_but_rest_stays_ready(start_service) -> None:  # type: ignore[no-untyped-def]
    """REST never needs Redis (writes go to the outbox): a Redis outage must not take it out of service."""
    service = start_service(REDIS_URL="redis://127.0.0.1:1/0")
    with httpx.Client(base_url=service.base_url, timeout=10) as client:
        ready = settled_ready(client, 200)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "unavailable"}}
        assert client.post("/orders", json={"product": "a", "quantity": 1}).status_code == 201
        metrics = client.get("/metrics").text
    assert 'orders_dependency_up{dependency="redis",role="http"} 0.0' in metrics
    assert 'orders_dependency_up{dependency="postgres",role="http"} 1.0' in metrics


def test_rate_limit_per_client_address_answers_429_with_ratelimit_headers(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service(RATE_LIMIT_RPS="1", RATE_LIMIT_BURST="3", HTTP_WORKERS="1")
    with httpx.Client(base_url=service.base_url, timeout=10) as client:
        answers = [client.get("/orders?limit=1") for _ in range(6)]
        assert client.get("/health").status_code == 200  # probes are never limited
    statuses = [a.status_code for a in answers]
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:], statuses
    refused = next(a for a in answers if a.status_code == 429)
    assert_problem(refused, 429)
    assert refused.headers["ratelimit-policy"] == '"client";q=3;w=3'
    assert re.fullmatch(r'"client";r=0;t=\d+', refused.headers["ratelimit"])
    assert int(refused.headers["retry-after"]) >= 1
    assert answers[0].headers["ratelimit"].startswith('"client";r=2;')


def test_undecodable_header_values_are_rejected_not_ignored(api: httpx.Client) -> None:
    order = create(api).json()
    url = f"/orders/{order['id']}"
    response = api.put(url, json={"product": "a", "quantity": 2}, headers={b"if-match": '"ü"'.encode()})
    assert_problem(response, 400, "If-Match")
    assert api.get(url).json()["version"] == 1
    generated = api.get("/health", headers={b"x-request-id": b"\xff\xfe"}).headers["x-request-id"]
    assert generated.isascii()
