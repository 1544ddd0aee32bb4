"""Wire types of the REST API. The same Structs drive decoding, encoding and the OpenAPI document."""

from __future__ import annotations

import msgspec

from service.domain import OrderStatus


class CreateOrderBody(msgspec.Struct, forbid_unknown_fields=True):
    product: str
    quantity: int


class UpdateOrderBody(msgspec.Struct, forbid_unknown_fields=True):
    product: str
    quantity: int
    status: OrderStatus | None = None


class FieldError(msgspec.Struct):
    field: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str
    errors: list[FieldError] | None = None


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str
    checks: dict[str, str]
