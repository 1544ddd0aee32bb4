"""What the consumer reads: a stream entry, the order it is about, the consumer's name, and the
line it logs for a handled entry."""

from __future__ import annotations

import logging
import os
import socket
import uuid

import msgspec

from service.domain import EventType
from service.events.stream import Fields, text
from service.observability.logging import request_id_var

# The name these lines have always been logged under.
log = logging.getLogger("service.events.consumer")


class OrderRef(msgspec.Struct):
    id: uuid.UUID


decode_ref = msgspec.json.Decoder(OrderRef).decode


CREATED = EventType.CREATED.value.encode()


# Events the consumer only acknowledges (the confirmation's own order.updated among them).
NOTHING_TO_DO = frozenset((EventType.UPDATED.value.encode(), EventType.DELETED.value.encode()))


def order_id_of(entry: Entry) -> str | None:
    try:
        return str(decode_ref(entry.fields.get(b"payload", b"")).id)
    except msgspec.DecodeError:
        return None


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Entry(msgspec.Struct):
    id: bytes
    fields: Fields
    deliveries: int


def log_handled(entry: Entry, outcome: str) -> None:
    """One line per handled event, at DEBUG (at INFO it cost more than confirming the order),
    with the request id of the request that made the event."""
    token = request_id_var.set(text(entry.fields, "request_id") or None)
    try:
        log.debug(
            "event handled",
            extra={
                "event": text(entry.fields, "event"),
                "event_id": text(entry.fields, "event_id"),
                "entry_id": entry.id.decode(),
                "deliveries": entry.deliveries,
                "outcome": outcome,
            },
        )
    finally:
        request_id_var.reset(token)
