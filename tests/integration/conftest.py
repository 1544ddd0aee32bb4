from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from service.clock import SystemClock, UuidV7Source
from service.cursor import CursorCodec
from service.orders import OrderService
from service.store.database import Database
from service.store.postgres import PostgresOrderStore
from tests.conftest import IsolatedSchema

if TYPE_CHECKING:
    from tests.conftest import TestServices


@pytest.fixture
async def database(schema: IsolatedSchema) -> AsyncIterator[Database]:
    db = Database(schema.dsn, pool_size=8, acquire_timeout=5.0)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def store(database: Database) -> PostgresOrderStore:
    return PostgresOrderStore(database)


@pytest.fixture
def pg_service(store: PostgresOrderStore) -> OrderService:
    return OrderService(store, SystemClock(), UuidV7Source(), CursorCodec(b"it"))


@pytest.fixture
async def redis_client(test_services: TestServices) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(test_services.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def stream(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    """A Redis stream name of this test's own; the stream and its dead-letter stream are deleted afterwards."""
    name = f"test-stream-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        await redis_client.delete(name, f"{name}.dlq")
