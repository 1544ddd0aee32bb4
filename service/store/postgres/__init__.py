"""The PostgreSQL adapters (psqlpy): the order store, its traced variant, and the outbox."""

from service.store.postgres.orders import PostgresOrderStore
from service.store.postgres.outbox import OUTBOX_CHANNEL, PostgresOutbox, PostgresRelaySession
from service.store.postgres.traced import TracedPostgresOrderStore

__all__ = [
    "OUTBOX_CHANNEL",
    "PostgresOrderStore",
    "PostgresOutbox",
    "PostgresRelaySession",
    "TracedPostgresOrderStore",
]
