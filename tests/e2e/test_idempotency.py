"""Idempotent creates over REST, enforced in PostgreSQL (gRPC cases live in test_grpc)."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx

from benchmarks.database import fetch_rows
from tests.conftest import IsolatedSchema


async def _count(dsn: str, sql: str) -> int:
    return int((await fetch_rows(dsn, sql))[0][0])


async def test_rest_idempotency_contract(start_service, service_schema: IsolatedSchema) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        key = f"checkout-{uuid.uuid4()}"
        body = {"product": "ticket", "quantity": 2}
        first = await client.post("/orders", json=body, headers={"idempotency-key": key})
        assert first.status_code == 201 and "idempotent-replayed" not in first.headers
        again = await client.post(
            "/orders", json={"quantity": 2, "product": "ticket"}, headers={"idempotency-key": key}
        )
        assert again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json() and again.headers["location"] == first.headers["location"]

        # the replay is the original response even after the order changed
        await client.put(f"/orders/{first.json()['id']}", json={"product": "ticket", "quantity": 9})
        assert (await client.post("/orders", json=body, headers={"idempotency-key": key})).json() == first.json()

        mismatch = await client.post(
            "/orders", json={"product": "ticket", "quantity": 3}, headers={"idempotency-key": key}
        )
        assert mismatch.status_code == 422
        assert mismatch.headers["content-type"] == "application/problem+json"

        for bad in [b"x" * 256, b"has space", "ünï".encode()]:
            response = await client.post("/orders", json=body, headers={b"idempotency-key": bad})
            assert response.status_code == 400, bad

        # a failed request stores no key: the corrected retry with the same key succeeds
        retry_key = f"retry-{uuid.uuid4()}"
        failed = await client.post(
            "/orders", json={"product": "", "quantity": 1}, headers={"idempotency-key": retry_key}
        )
        assert failed.status_code == 400
        fixed = await client.post(
            "/orders", json={"product": "fixed", "quantity": 1}, headers={"idempotency-key": retry_key}
        )
        assert fixed.status_code == 201 and "idempotent-replayed" not in fixed.headers

        orders_before = await _count(service_schema.dsn, "SELECT count(*) FROM orders")
        events_before = await _count(service_schema.dsn, "SELECT count(*) FROM outbox")
        burst_key = f"burst-{uuid.uuid4()}"
        responses = await asyncio.gather(
            *(
                client.post("/orders", json={"product": "burst", "quantity": 1}, headers={"idempotency-key": burst_key})
                for _ in range(50)
            )
        )
        assert {r.status_code for r in responses} == {201}
        assert len({r.json()["id"] for r in responses}) == 1
        assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
        assert await _count(service_schema.dsn, "SELECT count(*) FROM orders") == orders_before + 1
        assert await _count(service_schema.dsn, "SELECT count(*) FROM outbox") == events_before + 1


def test_keys_expire_after_the_ttl(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service(IDEMPOTENCY_TTL="1")
    key = f"short-{uuid.uuid4()}"
    with httpx.Client(base_url=service.base_url, timeout=10) as client:
        first = client.post("/orders", json={"product": "a", "quantity": 1}, headers={"idempotency-key": key})
        time.sleep(1.2)
        second = client.post("/orders", json={"product": "a", "quantity": 1}, headers={"idempotency-key": key})
    assert first.status_code == second.status_code == 201
    assert second.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in second.headers
