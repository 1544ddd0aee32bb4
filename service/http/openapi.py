"""The OpenAPI 3.1 document, generated from the same msgspec types the API decodes and encodes."""

from __future__ import annotations

from typing import Any

import msgspec

from service import __version__
from service.domain import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_PRODUCT_LENGTH,
    MAX_QUANTITY,
    MIN_QUANTITY,
    SCOPE_ADMIN,
    SCOPE_READ,
    SCOPE_WRITE,
    Order,
)
from service.http.schemas import CreateOrderBody, Health, Problem, Readiness, UpdateOrderBody
from service.ports import EventsFigures, PoolStats

_REF = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    if headers:
        response["headers"] = headers
    return response


def _json(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


_STRING_HEADER = {"schema": {"type": "string"}}
_REQUEST_ID_PARAM = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "Client request id (1..128 visible ASCII); generated when absent or invalid.",
    "schema": {"type": "string"},
}
_IF_MATCH_PARAM = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": 'Expected version as an entity tag, e.g. "3"; 412 when the order has moved on.',
    "schema": {"type": "string", "format": "entity-tag", "pattern": r'^[ \t]*(\*|(W/)?"[0-9]{1,19}")[ \t]*$'},
}
_IDEMPOTENCY_PARAM = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "1..255 visible ASCII characters. A retry with the same key and body replays the "
    "original 201 response (with Idempotent-Replayed: true) instead of creating another order.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
}
_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_RETRY_AFTER = {"Retry-After": _STRING_HEADER}
_COMMON_ERRORS = {
    "503": _problem("PostgreSQL unavailable", _RETRY_AFTER),
    "500": _problem("Unexpected error (no internals disclosed)"),
}
_ORDER_HEADERS = {"ETag": _STRING_HEADER, "X-Request-ID": _STRING_HEADER}


def _with_constraints(schemas: dict[str, Any]) -> None:
    """Document the service layer's rules on the wire types (the service enforces them)."""
    # Not blank, no NUL (PostgreSQL text cannot hold it).
    product = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_PRODUCT_LENGTH,
        "pattern": r"^[^\u0000]*[^\s\u0000][^\u0000]*$",
    }
    # An integral number (3.0 is 3, as in JSON Schema); the wire types decode it as int | float.
    quantity = {"type": "integer", "minimum": MIN_QUANTITY, "maximum": MAX_QUANTITY}
    for name in ("CreateOrderBody", "UpdateOrderBody", "Order"):
        props = schemas[name]["properties"]
        props["product"] = {**props["product"], **product}
        props["quantity"] = quantity
    schemas["Order"]["properties"]["version"]["minimum"] = 1


# The scope each operation needs with AUTH_MODE=jwt (RFC 6750 bearer JWTs).
OPERATION_SCOPES = {
    "createOrder": SCOPE_WRITE,
    "listOrders": SCOPE_READ,
    "watchOrderChanges": SCOPE_READ,
    "getOrder": SCOPE_READ,
    "updateOrder": SCOPE_WRITE,
    "deleteOrder": SCOPE_WRITE,
    "metrics": SCOPE_ADMIN,
    "dbMetrics": SCOPE_ADMIN,
    "eventsMetrics": SCOPE_ADMIN,
}
# Open without a token (service.http.api.OPEN_PATHS). Every operation is in one of the two tables,
# so a new one cannot be published as open by being forgotten.
OPEN_OPERATIONS = frozenset(("health", "ready", "openapi"))
_CHALLENGE = {"WWW-Authenticate": {"description": "RFC 6750 Bearer challenge", "schema": {"type": "string"}}}


def _secure(paths: dict[str, Any]) -> None:
    """Each operation's security requirement (its scope, or none when open) and its 401/403."""
    for operations in paths.values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue  # path-level parameters
            operation_id = operation["operationId"]
            if operation_id in OPEN_OPERATIONS:
                operation["security"] = []
                continue
            scope = OPERATION_SCOPES[operation_id]  # KeyError: an operation declared neither open nor scoped
            operation["security"] = [{"bearerAuth": [scope]}]
            operation["responses"]["401"] = _problem("No bearer token, or an invalid one", _CHALLENGE)
            operation["responses"]["403"] = _problem(f"The token lacks the scope {scope}", _CHALLENGE)


def build_openapi(secured: bool = True) -> dict[str, Any]:
    """The document; `secured` (AUTH_MODE=jwt) declares the bearer scheme and each operation's scope,
    without it (AUTH_MODE=none) no operation needs credentials, and the document says so."""
    (_, schemas) = msgspec.json.schema_components(
        [CreateOrderBody, UpdateOrderBody, Order, Problem, Health, Readiness, PoolStats, EventsFigures],
        ref_template=_REF,
    )
    _with_constraints(schemas)
    order_response = _json("The order", _ref("Order"), _ORDER_HEADERS)
    body_errors = {
        "400": _problem("Malformed JSON, wrong type, missing or unknown field, or a rule broken"),
        "413": _problem("Body over the size limit"),
        "415": _problem("Body is not JSON"),
    }
    paths: dict[str, Any] = {
        "/orders": {
            "post": {
                "operationId": "createOrder",
                "summary": "Create an order (status pending, version 1)",
                "parameters": [_REQUEST_ID_PARAM, _IDEMPOTENCY_PARAM],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CreateOrderBody")}},
                },
                "responses": {
                    "201": _json(
                        "Created (or replayed for a repeated Idempotency-Key)",
                        _ref("Order"),
                        {
                            **_ORDER_HEADERS,
                            "Location": _STRING_HEADER,
                            "Idempotent-Replayed": _STRING_HEADER,
                        },
                    ),
                    **body_errors,
                    "422": _problem("Idempotency-Key already used with a different body"),
                    **_COMMON_ERRORS,
                },
            },
            "get": {
                "operationId": "listOrders",
                "summary": "List orders, newest first, with keyset pagination",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_PAGE_SIZE,
                            "default": DEFAULT_PAGE_SIZE,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "format": "page-cursor", "maxLength": 64},
                        "description": "Opaque cursor from the previous page's Link header; 400 when it was "
                        "not issued by this service (malformed or tampered with)",
                    },
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["pending", "confirmed", "cancelled"]},
                    },
                    _REQUEST_ID_PARAM,
                ],
                "responses": {
                    "200": _json(
                        "A page of orders",
                        {"type": "array", "items": _ref("Order")},
                        {"Link": {"description": 'rel="next" URL when more orders exist', **_STRING_HEADER}},
                    ),
                    "400": _problem("Invalid limit, cursor or status"),
                    **_COMMON_ERRORS,
                },
            },
        },
        "/orders/changes": {
            "get": {
                "operationId": "watchOrderChanges",
                "summary": "Follow order changes live (Server-Sent Events), resumable",
                "description": "A text/event-stream that does not end on its own: each change is an event "
                "with `id: <cursor>`, `event: order.created|order.updated|order.deleted` and `data: <order JSON>` "
                "(for a delete, the order's last state). A comment line comes every WATCH_HEARTBEAT seconds (15 by "
                "default) while nothing happens. Resume with the standard Last-Event-ID header (or `after`): "
                "every later change once, in order. A watcher that falls more than WATCH_BUFFER changes behind "
                "gets a last `event: error` (problem JSON, status 429, type watcher-too-slow) and the stream "
                "ends; at shutdown the stream ends after its last event.",
                "parameters": [
                    {
                        "name": "order_id",
                        "in": "query",
                        "required": False,
                        "style": "form",
                        "explode": True,
                        "schema": {"type": "array", "maxItems": 100, "items": {"type": "string", "format": "uuid"}},
                        "description": "Only these orders (repeatable; absent: every order the caller may see); "
                        "400 for a malformed id, or an unknown one when not resuming",
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"},
                        "description": "Cursor (an event's id) to resume after; Last-Event-ID wins when both are sent",
                    },
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"},
                    },
                    _REQUEST_ID_PARAM,
                ],
                "responses": {
                    "200": {
                        "description": "The event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "400": _problem("Malformed cursor or order id, an unknown order id, more than 100 ids"),
                    "410": _problem("The cursor is older than the oldest change still held: changes are gone"),
                    **_COMMON_ERRORS,
                    "503": _problem("PostgreSQL or the event stream (Redis) unavailable; shutting down", _RETRY_AFTER),
                },
            },
        },
        "/orders/{id}": {
            "parameters": [_ID_PARAM],
            "get": {
                "operationId": "getOrder",
                "summary": "Get one order",
                "parameters": [_REQUEST_ID_PARAM],
                "responses": {
                    "200": order_response,
                    "404": _problem("Unknown or malformed id"),
                    **_COMMON_ERRORS,
                },
            },
            "put": {
                "operationId": "updateOrder",
                "summary": "Change product, quantity and optionally status",
                "description": "Allowed status changes: pending->confirmed, pending->cancelled, confirmed->cancelled.",
                "parameters": [_REQUEST_ID_PARAM, _IF_MATCH_PARAM],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("UpdateOrderBody")}},
                },
                "responses": {
                    "200": order_response,
                    **body_errors,
                    "404": _problem("Unknown or malformed id"),
                    "409": _problem("Status change not allowed"),
                    "412": _problem("If-Match version is stale"),
                    **_COMMON_ERRORS,
                },
            },
            "delete": {
                "operationId": "deleteOrder",
                "summary": "Delete an order",
                "parameters": [_REQUEST_ID_PARAM, _IF_MATCH_PARAM],
                "responses": {
                    "204": {"description": "Deleted"},
                    "400": _problem("Malformed If-Match"),
                    "404": _problem("Unknown or malformed id"),
                    "412": _problem("If-Match version is stale"),
                    **_COMMON_ERRORS,
                },
            },
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness",
                "responses": {"200": _json("Process is running", _ref("Health"))},
            }
        },
        "/ready": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: PostgreSQL answers (Redis is reported, never fails it)",
                "responses": {
                    "200": _json("Ready", _ref("Readiness")),
                    "503": _json("A dependency failed", _ref("Readiness"), _RETRY_AFTER),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus exposition, merged across every process of the service",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/metrics/db": {
            "get": {
                "operationId": "dbMetrics",
                "summary": "Connection-pool figures of the answering worker",
                "responses": {"200": _json("Pool figures", _ref("PoolStats"))},
            }
        },
        "/metrics/events": {
            "get": {
                "operationId": "eventsMetrics",
                "summary": "Outbox backlog, stream length, group pending and lag, dead-letter length",
                "description": "A side that cannot be reached (PostgreSQL or Redis) reports nulls and "
                '`"error": "unavailable"` rather than failing the whole answer.',
                "responses": {"200": _json("Event pipeline figures", _ref("EventsFigures"))},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json("OpenAPI 3.1 document", {"type": "object"})},
            }
        },
    }
    if secured:
        _secure(paths)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "orders-service",
            "version": __version__,
            "description": "Order management: REST API (this document) and gRPC (proto/orders.proto).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": (
                        "With AUTH_MODE=jwt: a JWT of the configured issuer, with scopes orders:read, "
                        "orders:write and orders:admin (every owner's orders, /metrics*). "
                        "Another owner's order answers 404, as if absent."
                    ),
                }
            },
        },
    }
    if not secured:
        del document["components"]["securitySchemes"]
    return document


def openapi_bytes(secured: bool = True) -> bytes:
    return msgspec.json.encode(build_openapi(secured))
