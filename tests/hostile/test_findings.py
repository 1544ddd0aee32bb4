"""Regression tests of the hostile-input findings, over the real server (RELIABILITY.md lists them)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

from service.cursor import CursorCodec
from service.http.api import parse_if_match
from service.http.problems import HttpError
from tests.e2e.conftest import ServiceProcess
from tests.hostile.conftest import CURSOR_SECRET

pytestmark = [pytest.mark.e2e, pytest.mark.hostile]


@pytest.fixture
def api(hostile_service: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hostile_service.base_url, timeout=10) as client:
        yield client


def fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return [error["field"] for error in response.json()["errors"]]


@pytest.mark.parametrize(
    "limit", ["%C2%B2", "%D9%A3", "%EF%BC%93"]
)  # superscript 2 (was a 500), Arabic-Indic 3, fullwidth 3 (were 3)
def test_non_ascii_digits_in_limit_are_a_400(api: httpx.Client, limit: str) -> None:
    assert fields(api.get(f"/orders?limit={limit}")) == ["limit"]


@pytest.mark.parametrize("value", ['"²"', '"٣"', '"\uff13"', '\v"3"'])
def test_if_match_takes_ascii_digits_only(value: str) -> None:
    with pytest.raises(HttpError):
        parse_if_match(value)
    assert parse_if_match(' W/"3"\t') == 3


def test_nul_in_product_is_a_400_not_a_database_error(api: httpx.Client) -> None:
    """Was a 500: PostgreSQL text cannot hold U+0000."""
    assert fields(api.post("/orders", json={"product": "a\x00b", "quantity": 1})) == ["product"]
    order = api.post("/orders", json={"product": "ok", "quantity": 1}).json()
    assert fields(api.put(f"/orders/{order['id']}", json={"product": "\x00", "quantity": 1})) == ["product"]


def test_integral_float_quantity_is_accepted_as_the_integer(api: httpx.Client) -> None:
    """JSON Schema's "integer" includes 5.0; the API refused it although its document allowed it."""
    created = api.post(
        "/orders", content=b'{"product": "float", "quantity": 5.0}', headers={"content-type": "application/json"}
    )
    assert created.status_code == 201 and created.json()["quantity"] == 5
    updated = api.put(
        f"/orders/{created.json()['id']}",
        content=b'{"product": "float", "quantity": 7e0}',
        headers={"content-type": "application/json"},
    )
    assert updated.status_code == 200 and updated.json()["quantity"] == 7
    for body in (b'{"product": "f", "quantity": 5.5}', b'{"product": "f", "quantity": 1e400}'):
        assert fields(api.post("/orders", content=body, headers={"content-type": "application/json"})) == ["quantity"]


def test_empty_status_filter_is_a_400(api: httpx.Client) -> None:
    """Was answered as "no filter" although the document allows only the three statuses."""
    assert fields(api.get("/orders?status=")) == ["status"]
    assert api.get("/orders").status_code == 200


def test_invalid_utf8_in_a_body_string_is_a_400(api: httpx.Client) -> None:
    """Was a 500: msgspec raises UnicodeDecodeError, not a DecodeError, for it."""
    body = b'{"product": "\xff", "quantity": 1}'
    assert fields(api.post("/orders", content=body, headers={"content-type": "application/json"})) == ["body"]


def test_unknown_field_with_backticks_is_named_exactly(api: httpx.Client) -> None:
    """Was reported as a field named by the text before its first backtick."""
    body = {"product": "a", "quantity": 1, "a`b - at `$.quantity`": 1}
    assert fields(api.post("/orders", json=body)) == ["a`b - at `$.quantity`"]


def test_only_the_issued_spelling_of_a_cursor_is_accepted(api: httpx.Client) -> None:
    token = CursorCodec(CURSOR_SECRET.encode()).encode(uuid.uuid4())
    assert api.get("/orders", params={"cursor": token}).status_code == 200
    last = "A" if token[-1] != "A" else "B"
    for other in (token[:-1] + last, token + "=", token[:3] + "!" + token[3:]):
        assert fields(api.get("/orders", params={"cursor": other})) == ["cursor"]


def test_openapi_documents_what_the_service_enforces(api: httpx.Client) -> None:
    doc = api.get("/openapi.json").json()
    body = doc["components"]["schemas"]["CreateOrderBody"]["properties"]
    assert body["quantity"] == {"type": "integer", "minimum": 1, "maximum": 1_000_000}
    product = re.compile(body["product"]["pattern"].replace("\\u0000", "\\x00"))
    assert product.search("a b") and not product.search("a\x00b") and not product.search("  ")
    update = doc["paths"]["/orders/{id}"]["put"]["parameters"]
    if_match = next(p for p in update if p["name"] == "If-Match")["schema"]
    assert if_match["format"] == "entity-tag"
    pattern = re.compile(if_match["pattern"])
    assert all(pattern.match(v) for v in ("*", '"3"', 'W/"12"', ' "4" '))
    assert not any(pattern.match(v) for v in ("", "3", '"x"', '"3', '"' + "9" * 20 + '"'))
    listing = doc["paths"]["/orders"]["get"]["parameters"]
    cursor = next(p for p in listing if p["name"] == "cursor")["schema"]
    assert cursor["format"] == "page-cursor"
