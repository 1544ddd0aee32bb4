"""Property-based tests (hypothesis) of the codec, the page cursors and the status graph.

- Any JSON body for a create or an update either decodes to a valid command (201 / 200 with
  exactly the values sent) or yields a 400 problem naming a field, through the real REST core
  (the same msgspec decoders, problem mapping and service layer as production, on the
  in-memory store).
- Cursors round-trip, and every other string, tampered ones included, is rejected.
- Over random sequences of commands an order's status never leaves the allowed graph.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import uuid
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service.cursor import CursorCodec
from service.domain import (
    ALLOWED_TRANSITIONS,
    MAX_PRODUCT_LENGTH,
    MAX_QUANTITY,
    MIN_QUANTITY,
    InvalidTransition,
    OrderNotFound,
    OrderStatus,
    ValidationFailed,
    VersionMismatch,
)
from service.http.api import HttpRequest, HttpResponse, RestApi
from service.orders import OrderService
from tests.unit.fakes import make_service

pytestmark = pytest.mark.hostile

STATUSES = [s.value for s in OrderStatus]
KNOWN_FIELDS = {"product", "quantity", "status"}

# ---- strategies --------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
products = (
    st.text(max_size=MAX_PRODUCT_LENGTH + 5)
    | st.sampled_from(["", " ", "\t\n", "\u00a0", "a\x00b", "x" * MAX_PRODUCT_LENGTH, "x" * (MAX_PRODUCT_LENGTH + 1)])
    | json_values
)
quantities = (
    st.integers(min_value=MIN_QUANTITY - 2, max_value=MAX_QUANTITY + 2)
    | st.sampled_from([0, -1, MAX_QUANTITY, MAX_QUANTITY + 1, 2**63, 2**64, -(2**63) - 1, 10**30, 5.0, 5.5, 1e6, 1e20])
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_values
)
statuses = st.sampled_from([*STATUSES, None, "", "PENDING", "unknown"]) | json_values
unknown_keys = st.text(max_size=10).filter(lambda k: k not in KNOWN_FIELDS)


@st.composite
def near_valid_bodies(draw: st.DrawFn, with_status: bool) -> dict[str, Any]:
    """Objects with each known field present or not, valid or not, and maybe unknown fields."""
    body: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        body["product"] = draw(products)
    if draw(st.integers(0, 9)):
        body["quantity"] = draw(quantities)
    if with_status and draw(st.booleans()):
        body["status"] = draw(statuses)
    if not draw(st.integers(0, 4)):
        body.update(draw(st.dictionaries(unknown_keys, json_values, min_size=1, max_size=2)))
    return body


def create_bodies() -> st.SearchStrategy[Any]:
    return near_valid_bodies(with_status=False) | json_values


def update_bodies() -> st.SearchStrategy[Any]:
    return near_valid_bodies(with_status=True) | json_values


# ---- the oracle: what the API promises --------------------------------------------------------


def valid_product(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and len(value) <= MAX_PRODUCT_LENGTH and "\x00" not in value


def integral(value: Any) -> int | None:
    """The integer a JSON number names (3.0 is 3), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def valid_quantity(value: Any) -> bool:
    number = integral(value)
    return number is not None and MIN_QUANTITY <= number <= MAX_QUANTITY


def expected_command(body: Any, allowed: set[str]) -> dict[str, Any] | None:
    """The command a body is, or None when the API must refuse it."""
    if not isinstance(body, dict) or set(body) - allowed or not {"product", "quantity"} <= set(body):
        return None
    if not valid_product(body["product"]) or not valid_quantity(body["quantity"]):
        return None
    status = body.get("status")
    if status is not None and status not in STATUSES:
        return None
    return {"product": body["product"], "quantity": integral(body["quantity"]), "status": status}


def assert_names_a_field(response: HttpResponse, body: Any) -> None:
    assert response.status == 400, (response.status, response.body, body)
    assert dict(response.headers)["content-type"] == "application/problem+json"
    problem = msgspec.json.decode(response.body)
    assert problem["status"] == 400
    named = {error["field"] for error in problem["errors"]}
    assert named, problem
    candidates = KNOWN_FIELDS | ({*body} if isinstance(body, dict) else set()) | {"body"}
    assert named <= candidates, (named, body)
    if not isinstance(body, dict):
        assert named == {"body"}, (named, body)
    for field in named:
        assert field in problem["detail"], problem


def assert_400_for_unparseable(response: HttpResponse, raw: bytes) -> None:
    """Bytes that are not JSON: a 400 naming `body`, or a field msgspec met before the break
    (it validates while it parses)."""
    assert response.status == 400, (response.status, raw)
    named = [e["field"] for e in msgspec.json.decode(response.body)["errors"]]
    assert named and all(f == "body" or f in KNOWN_FIELDS or f.encode() in raw for f in named), (named, raw)


# ---- bodies through the real REST core ---------------------------------------------------------


JSON_HEADERS = {"content-type": "application/json"}


def make_api(service: OrderService) -> RestApi:
    return RestApi(
        service,
        json_endpoints={},
        openapi_document=b"{}",
        max_body_bytes=1 << 20,
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def post(api: RestApi, body: bytes) -> HttpResponse:
    request = HttpRequest("POST", "/orders", "", JSON_HEADERS, body)
    response: HttpResponse = run(api.handle(request))
    return response


BODY_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@BODY_SETTINGS
@given(create_bodies())
def test_any_create_body_is_a_valid_command_or_a_400_naming_a_field(body: Any) -> None:
    service, store, _ = make_service()
    response = post(make_api(service), json.dumps(body).encode())
    command = expected_command(body, {"product", "quantity"})
    if command is None:
        assert_names_a_field(response, body)
        assert store.orders == {}
        return
    assert response.status == 201, (response.status, response.body, body)
    created = msgspec.json.decode(response.body)
    assert (created["product"], created["quantity"], created["status"]) == (
        command["product"],
        command["quantity"],
        "pending",
    )
    assert len(store.orders) == 1


@BODY_SETTINGS
@given(update_bodies())
def test_any_update_body_is_a_valid_command_or_a_400_naming_a_field(body: Any) -> None:
    service, store, _ = make_service()
    api = make_api(service)
    order_id = msgspec.json.decode(post(api, b'{"product": "seed", "quantity": 1}').body)["id"]
    request = HttpRequest("PUT", f"/orders/{order_id}", "", JSON_HEADERS, json.dumps(body).encode())
    response: HttpResponse = run(api.handle(request))
    command = expected_command(body, KNOWN_FIELDS)
    if command is None:
        assert_names_a_field(response, body)
        assert next(iter(store.orders.values())).version == 1
        return
    assert response.status == 200, (response.status, response.body, body)
    updated = msgspec.json.decode(response.body)
    assert (updated["product"], updated["quantity"]) == (command["product"], command["quantity"])
    assert updated["status"] == (command["status"] or "pending")  # every status is reachable from pending


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_any_bytes_as_a_create_body_are_a_201_or_a_400_naming_a_field(raw: bytes) -> None:
    service, _, _ = make_service()
    response = post(make_api(service), raw)
    try:
        body = json.loads(raw)
    except ValueError:
        assert_400_for_unparseable(response, raw)
        return
    if expected_command(body, {"product", "quantity"}) is None:
        assert response.status == 400, (response.status, raw)
    else:
        assert response.status == 201, (response.status, raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=8), st.sampled_from(["create", "update"]))
def test_any_bytes_inside_a_json_string_are_a_valid_command_or_a_400(junk: bytes, kind: str) -> None:
    """Regression: invalid UTF-8 inside a string made msgspec raise UnicodeDecodeError, a 500."""
    service, _, _ = make_service()
    api = make_api(service)
    order_id = msgspec.json.decode(post(api, b'{"product": "seed", "quantity": 1}').body)["id"]
    body = b'{"product": "' + junk + b'", "quantity": 1}'
    try:
        parsed: Any = json.loads(body.decode("utf-8"))
    except ValueError:  # invalid UTF-8 or JSON
        parsed = None
    if kind == "create":
        response = post(api, body)
    else:
        response = run(api.handle(HttpRequest("PUT", f"/orders/{order_id}", "", JSON_HEADERS, body)))
    if parsed is None:
        assert_400_for_unparseable(response, body)
    elif expected_command(parsed, KNOWN_FIELDS) is not None:
        assert response.status in (200, 201), (response.status, response.body)
    else:
        assert_names_a_field(response, parsed)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"product": "\xff", "quantity": 1}', "body"),  # invalid UTF-8 (regression: was a 500)
        (b'{"product": "\xc3\x28", "quantity": 1}', "body"),
        (b'{"product": "\\ud800", "quantity": 1}', "body"),  # a lone surrogate is not a character
        (b'{"product": "a", "quantity": 1e400}', "quantity"),  # out of any float's range
        (b'{"product": "a", "quantity": 2.5}', "quantity"),
        (b'{"product": "a\\u0000", "quantity": 1}', "product"),  # PostgreSQL text cannot hold NUL
        (b'{"product": "a", "quantity": 1, "a`b": 1}', "a`b"),
        (b'{"product": "a", "quantity": 1, "at `$.x`": 1}', "at `$.x`"),
        (b'{"product": "a", "quantity": 1, "a` - at `$.x": 1}', "a` - at `$.x"),
    ],
)
def test_edge_bodies_name_their_field(body: bytes, field: str) -> None:
    service, _, _ = make_service()
    response = post(make_api(service), body)
    assert response.status == 400
    assert [e["field"] for e in msgspec.json.decode(response.body)["errors"]] == [field]


def test_integral_float_quantity_is_that_integer() -> None:
    service, _, _ = make_service()
    response = post(make_api(service), b'{"product": "a", "quantity": 5.0}')
    assert response.status == 201
    assert msgspec.json.decode(response.body)["quantity"] == 5


# ---- cursors -----------------------------------------------------------------------------------

keys = st.binary(min_size=1, max_size=64)


@given(keys, st.uuids())
def test_cursor_round_trips(key: bytes, order_id: uuid.UUID) -> None:
    codec = CursorCodec(key)
    token = codec.encode(order_id)
    assert codec.decode(token) == order_id
    assert token.isascii() and len(token) <= 64 and "=" not in token


@settings(max_examples=300)
@given(keys, st.uuids(), st.data())
def test_a_tampered_cursor_is_rejected(key: bytes, order_id: uuid.UUID, data: st.DataObject) -> None:
    codec = CursorCodec(key)
    token = codec.encode(order_id)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    tamper = data.draw(st.sampled_from(["replace", "drop", "insert", "pad", "flip"]))
    position = data.draw(st.integers(0, len(token) - 1))
    if tamper == "replace":
        tampered = token[:position] + data.draw(st.sampled_from(alphabet)) + token[position + 1 :]
    elif tamper == "drop":
        tampered = token[:position] + token[position + 1 :]
    elif tamper == "insert":
        tampered = token[:position] + data.draw(st.characters()) + token[position:]
    elif tamper == "pad":
        tampered = token + data.draw(st.sampled_from(["=", "==", " ", "\n", "A"]))
    else:  # flip one bit of the decoded bytes and encode again
        raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        raw[position % len(raw)] ^= 1 << data.draw(st.integers(0, 7))
        tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assume(tampered != token)
    assert codec.decode(tampered) is None


def test_no_other_spelling_of_a_cursor_is_accepted() -> None:
    """Regression: base64 decoding ignored the last character's 4 spare bits, padding and
    characters outside the alphabet, so 15 other last characters, "=" padding or a stray "!"
    decoded to the same cursor."""
    codec = CursorCodec(b"k")
    token = codec.encode(uuid.UUID(int=12345))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spellings = [token[:-1] + c for c in alphabet if c != token[-1]]
    spellings += [token + "=", token + "==", token[:5] + "!" + token[5:], token[:5] + "+" + token[6:]]
    assert [s for s in spellings if codec.decode(s) is not None] == []


@given(keys, keys, st.uuids())
def test_a_cursor_of_another_key_is_rejected(key: bytes, other: bytes, order_id: uuid.UUID) -> None:
    assume(key != other)
    assert CursorCodec(other).decode(CursorCodec(key).encode(order_id)) is None


@given(keys, st.text(max_size=80))
def test_any_string_is_rejected_unless_it_is_the_issued_cursor(key: bytes, text: str) -> None:
    codec = CursorCodec(key)
    decoded = codec.decode(text)  # never raises
    assert decoded is None or codec.encode(decoded) == text


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40).filter(bool))
def test_a_foreign_cursor_is_a_400_naming_the_cursor(text: str) -> None:
    service, _, _ = make_service()
    assume(CursorCodec(b"test-key").decode(text) is None)  # the key make_service uses
    query = "cursor=" + "".join(f"%{b:02X}" for b in text.encode())
    response: HttpResponse = run(make_api(service).handle(HttpRequest("GET", "/orders", query, {})))
    assert response.status == 400
    assert [e["field"] for e in msgspec.json.decode(response.body)["errors"]] == ["cursor"]


# ---- status transitions ------------------------------------------------------------------------

commands = st.lists(
    st.one_of(
        st.tuples(st.just("status"), st.sampled_from(STATUSES), st.booleans()),
        st.tuples(st.just("fields"), st.sampled_from(["a", "b"]), st.integers(1, 3)),
        st.tuples(st.just("confirm"), st.none(), st.none()),
        st.tuples(st.just("stale"), st.sampled_from(STATUSES), st.none()),
        st.tuples(st.just("delete"), st.none(), st.none()),
    ),
    max_size=12,
)


async def apply_commands(steps: list[tuple[str, Any, Any]]) -> None:
    service, store, _ = make_service()
    order = (await service.create("p", 1)).order
    oid = str(order.id)
    history = [order.status]
    version = order.version
    state = (order.product, order.quantity)
    deleted = False
    for kind, arg, flag in steps:
        before = history[-1]
        try:
            if kind == "status":
                result = await service.update(oid, status=arg, expected_version=version if flag else None)
            elif kind == "fields":
                result = await service.update(oid, product=arg, quantity=flag)
            elif kind == "stale":
                result = await service.update(oid, status=arg, expected_version=version + 1)
            elif kind == "confirm":
                confirmed = await service.confirm(oid)
                assert confirmed == (not deleted and before is OrderStatus.PENDING)
                if deleted:
                    continue
                result = await service.get(oid)
            else:
                await service.delete(oid)
                deleted = True
                continue
        except OrderNotFound:
            assert deleted
            continue
        except VersionMismatch:
            assert kind == "stale"
            continue
        except InvalidTransition as exc:
            assert kind == "status" and exc.current == before
            assert OrderStatus(arg) not in ALLOWED_TRANSITIONS[before] and OrderStatus(arg) != before
            continue
        except ValidationFailed as exc:  # every generated value is valid
            raise AssertionError(exc.violations) from exc
        assert not deleted and kind != "stale"
        assert result is not None
        after = result.status
        assert after == before or after in ALLOWED_TRANSITIONS[before], (before, after)
        if kind == "status":
            assert after == OrderStatus(arg)
        changed = (after, result.product, result.quantity) != (before, state[0], state[1])
        assert result.version == version + changed  # one version per change, none for a no-op
        version = result.version
        state = (result.product, result.quantity)
        history.append(after)
    for before, after in itertools.pairwise(history):
        assert after == before or after in ALLOWED_TRANSITIONS[before]
    for event in store.outbox:
        assert event.order.status in OrderStatus


@settings(max_examples=300, deadline=None)
@given(commands)
def test_status_never_leaves_the_allowed_graph(steps: list[tuple[str, Any, Any]]) -> None:
    run(apply_commands(steps))
