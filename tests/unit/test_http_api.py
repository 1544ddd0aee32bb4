"""The transport-independent REST core, on the in-memory store (no server, no sockets)."""

from __future__ import annotations

import msgspec
import pytest

from service.domain import StoreUnavailable
from service.http.api import HttpRequest, RestApi, parse_if_match
from service.http.openapi import build_openapi
from service.http.problems import HttpError
from tests.unit.fakes import make_service


def make_api(service: object | None = None) -> RestApi:
    return RestApi(
        service if service is not None else make_service()[0],  # type: ignore[arg-type]
        json_endpoints={},
        openapi_document=b"{}",
        max_body_bytes=1024,
    )


def request(method: str, path: str, body: bytes = b"", **headers: str) -> HttpRequest:
    if body:
        headers.setdefault("content-type", "application/json")
    return HttpRequest(method, path, "", headers, body)


class ExplodingService:
    async def get(self, order_id: str) -> None:
        raise RuntimeError("secret connection string postgres://u:pw@db")

    async def list(self, **_: object) -> None:
        raise StoreUnavailable("down")


async def test_unexpected_errors_are_500_without_internals() -> None:
    response = await make_api(ExplodingService()).handle(request("GET", "/orders/x", **{"x-request-id": "r1"}))
    assert response.status == 500
    body = msgspec.json.decode(response.body)
    assert body["request_id"] == "r1" and body["status"] == 500
    assert "secret" not in response.body.decode() and "pw" not in response.body.decode()


async def test_store_unavailable_is_503_with_retry_after() -> None:
    response = await make_api(ExplodingService()).handle(request("GET", "/orders"))
    assert response.status == 503
    assert dict(response.headers)["retry-after"] in {"1", "2", "3"}


async def test_flagged_oversize_body_is_413() -> None:
    api = make_api()
    response = await api.handle(HttpRequest("POST", "/orders", "", {}, b"", body_too_large=True))
    assert response.status == 413


async def test_replayed_create_has_same_body_and_marker_header() -> None:
    api = make_api()
    body = b'{"product": "a", "quantity": 1}'
    first = await api.handle(request("POST", "/orders", body, **{"idempotency-key": "k"}))
    again = await api.handle(request("POST", "/orders", body, **{"idempotency-key": "k"}))
    assert first.status == again.status == 201 and first.body == again.body
    assert ("idempotent-replayed", "true") in again.headers
    assert dict(first.headers)["location"] == dict(again.headers)["location"]
    mismatch = await api.handle(
        request("POST", "/orders", b'{"product": "b", "quantity": 1}', **{"idempotency-key": "k"})
    )
    assert mismatch.status == 422


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("*", None), ('"3"', 3), ('W/"12"', 12), (' "7" ', 7)],
)
def test_if_match_parsing(header: str | None, expected: int | None) -> None:
    assert parse_if_match(header) == expected


@pytest.mark.parametrize("header", ["3", '"x"', '""', '"1", "2"', '"99999999999999999999999"'])
def test_if_match_rejects_malformed(header: str) -> None:
    with pytest.raises(HttpError):
        parse_if_match(header)


def test_openapi_documents_every_route_and_error() -> None:
    doc = build_openapi()
    post = doc["paths"]["/orders"]["post"]
    assert {"201", "400", "413", "415", "422", "503"} <= post["responses"].keys()
    assert "409" not in post["responses"]  # no create is ever "still in progress"
    assert "409" not in doc["paths"]["/orders/{id}"]["delete"]["responses"]  # a delete has no status change
    assert any(p["name"] == "Idempotency-Key" for p in post["parameters"])
    put = doc["paths"]["/orders/{id}"]["put"]
    assert {"200", "400", "404", "409", "412", "503"} <= put["responses"].keys()
    refs = msgspec.json.encode(doc).decode()
    for name in ("Order", "CreateOrderBody", "UpdateOrderBody", "Problem"):
        assert f"#/components/schemas/{name}" in refs
        assert name in doc["components"]["schemas"]
