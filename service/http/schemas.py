"""Wire types of the REST API. The same Structs drive decoding, encoding and the OpenAPI document."""

from __future__ import annotations

import msgspec

from service.domain import OrderStatus


def _integral(value: int | float) -> int:
    """JSON has one number type: 3.0 is the integer 3 (JSON Schema's "integer" agrees), 3.5 is not."""
    if isinstance(value, float):
        if not value.is_integer():
            # msgspec turns this into a ValidationError; the path names the field in the 400.
            raise ValueError("Expected `int`, got `float` - at `$.quantity`")
        return int(value)
    return value


class CreateOrderBody(msgspec.Struct, forbid_unknown_fields=True):
    product: str
    wire_quantity: int | float = msgspec.field(name="quantity")

    def __post_init__(self) -> None:
        self.wire_quantity = _integral(self.wire_quantity)

    @property
    def quantity(self) -> int:
        return int(self.wire_quantity)


class UpdateOrderBody(msgspec.Struct, forbid_unknown_fields=True):
    product: str
    wire_quantity: int | float = msgspec.field(name="quantity")
    status: OrderStatus | None = None

    def __post_init__(self) -> None:
        self.wire_quantity = _integral(self.wire_quantity)

    @property
    def quantity(self) -> int:
        return int(self.wire_quantity)


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
