"""The REST API over each runtime the comparison measures: granian RSGI (production), ASGI, robyn.

Each runtime is the real server process (benchmarks/runtimes/servers.py starts them the way the
benchmark does) on a free port, in a schema of its own. The same checks run against each, so a
runtime whose binding differs shows up by name: `test_crud_lifecycle[robyn]`.

    pytest -m runtime
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from benchmarks.runtimes.servers import RUNTIMES, RuntimeServer
from tests.conftest import IsolatedSchema
from tests.e2e.test_rest_api import JSON_HEADERS, assert_problem, create

if TYPE_CHECKING:
    from tests.conftest import TestServices

pytestmark = [pytest.mark.e2e, pytest.mark.runtime]


@pytest.fixture(scope="module", params=list(RUNTIMES), ids=list(RUNTIMES))
def runtime(request: pytest.FixtureRequest, test_services: TestServices) -> Iterator[RuntimeServer]:
    if request.param == "robyn":
        pytest.importorskip("robyn", reason="robyn comes with the `runtimes` extra (and `dev`)")
    isolated = IsolatedSchema(test_services.database_url)
    asyncio.run(isolated.create())
    server = RuntimeServer(request.param, isolated.dsn, test_services.redis_url, workers=2)
    try:
        server.start(timeout=60)
        yield server
    finally:
        server.stop(timeout=10)  # robyn does not drain; stop() kills what SIGTERM leaves running
        server.remove_log()
        asyncio.run(isolated.drop())


@pytest.fixture
def api(runtime: RuntimeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=runtime.base_url, timeout=10) as client:
        yield client


def test_crud_lifecycle(api: httpx.Client) -> None:
    created = create(api, "  widget  ", 3)
    assert created.status_code == 201, created.text
    order = created.json()
    assert (order["product"], order["quantity"], order["status"], order["version"]) == ("  widget  ", 3, "pending", 1)
    assert created.headers["location"] == f"/orders/{order['id']}"
    assert created.headers["etag"] == '"1"'
    assert created.headers["content-type"] == "application/json"

    got = api.get(f"/orders/{order['id']}")
    assert got.status_code == 200 and got.json() == order and got.headers["etag"] == '"1"'

    updated = api.put(f"/orders/{order['id']}", json={"product": "pen", "quantity": 5, "status": "confirmed"})
    assert updated.status_code == 200, updated.text
    assert (updated.json()["product"], updated.json()["status"], updated.json()["version"]) == ("pen", "confirmed", 2)
    assert updated.headers["etag"] == '"2"'
    assert api.get(f"/orders/{order['id']}").json() == updated.json()

    deleted = api.delete(f"/orders/{order['id']}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert_problem(api.get(f"/orders/{order['id']}"), 404)
    assert_problem(api.delete(f"/orders/{order['id']}"), 404)


def test_list_pages_with_link_and_status_filter(api: httpx.Client) -> None:
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
        assert page.status_code == 200, page.text
        seen += [o["id"] for o in page.json() if o["product"] == marker]
        link = page.headers.get("link")
        match = re.fullmatch(r'<([^>]+)>; rel="next"', link) if link else None
        url = match.group(1) if match else None
    assert seen == ids[1:][::-1]
    assert_problem(api.get("/orders", params={"limit": "0"}), 400, "limit")
    assert_problem(api.get("/orders", params={"cursor": "bogus"}), 400, "cursor")


@pytest.mark.parametrize("path", ["/orders/not-a-uuid", f"/orders/{uuid.uuid4()}", "/orders/%00", "/nope"])
def test_unknown_is_404(api: httpx.Client, path: str) -> None:
    assert_problem(api.get(path), 404)


def test_wrong_method_is_405_with_allow(api: httpx.Client) -> None:
    response = api.patch("/orders")
    assert_problem(response, 405)
    assert response.headers["allow"] == "GET, POST"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"product": "a"}', "quantity"),
        ('{"product": "a", "quantity": 0}', "quantity"),
        ('{"product": "   ", "quantity": 1}', "product"),
        ('{"product": "a", "quantity": 1, "price": 3}', "price"),
    ],
)
def test_validation_is_400_naming_the_field(api: httpx.Client, body: str, field: str) -> None:
    assert_problem(api.post("/orders", content=body, headers=JSON_HEADERS), 400, field)


@pytest.mark.parametrize("body", ['{"product": "a", "quantity": 1', "not json", "", "[]"])
def test_bad_json_is_400(api: httpx.Client, body: str) -> None:
    assert_problem(api.post("/orders", content=body, headers=JSON_HEADERS), 400, "body")
    order = create(api).json()
    assert_problem(api.put(f"/orders/{order['id']}", content=body, headers=JSON_HEADERS), 400, "body")


def test_if_match_guards_update_and_delete(api: httpx.Client) -> None:
    order = create(api).json()
    url = f"/orders/{order['id']}"
    ok = api.put(url, json={"product": "a", "quantity": 2}, headers={"if-match": '"1"'})
    assert ok.status_code == 200 and ok.headers["etag"] == '"2"'
    assert_problem(api.put(url, json={"product": "a", "quantity": 3}, headers={"if-match": '"1"'}), 412)
    assert_problem(api.put(url, json={"product": "a", "quantity": 3}, headers={"if-match": "garbage"}), 400, "If-Match")
    assert_problem(api.delete(url, headers={"if-match": '"1"'}), 412)
    assert api.get(url).json()["version"] == 2
    assert api.delete(url, headers={"if-match": '"2"'}).status_code == 204


def test_body_limit_and_media_type(api: httpx.Client) -> None:
    body = json.dumps({"product": "a", "quantity": 1, "pad": "x" * 70_000})
    assert_problem(api.post("/orders", content=body, headers=JSON_HEADERS), 413)
    assert_problem(api.post("/orders", content="product=a", headers={"content-type": "text/plain"}), 415)


def test_request_id_is_echoed_and_health_answers(api: httpx.Client) -> None:
    mine = f"trace-{uuid.uuid4().hex}"
    assert create(api, **{"x-request-id": mine}).headers["x-request-id"] == mine
    health = api.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
