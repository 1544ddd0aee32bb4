"""RATE_LIMIT_RPS over gRPC, on a real channel: the limiter REST uses, per client address without
authentication and per owner with it; beyond the burst RESOURCE_EXHAUSTED with RetryInfo and the
RateLimit hints in trailing metadata."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from service.grpc.pb import orders_pb2, orders_pb2_grpc
from tests.auth_tokens import AUDIENCE, ISSUER, SigningKey, write_jwks

pytestmark = pytest.mark.e2e

LIMIT = {"RATE_LIMIT_RPS": "0.5", "RATE_LIMIT_BURST": "3", "GRPC_WORKERS": "1"}  # a token every 2 s


async def _list(stub: orders_pb2_grpc.OrderServiceStub, token: str | None = None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        await stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=1), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_grpc_beyond_the_burst_is_resource_exhausted_with_a_retry_hint(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service(roles="http,grpc", wait_for_grpc=True, **LIMIT)
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        stub = orders_pb2_grpc.OrderServiceStub(channel)
        codes = [await _list(stub) for _ in range(3)]
        assert codes == [grpc.StatusCode.OK] * 3
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateOrder(orders_pb2.CreateOrderRequest(product="x", quantity=1), timeout=10)
        refused = caught.value
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit" in (refused.details() or "")
        trailing = {key: value for key, value in refused.trailing_metadata() or () if isinstance(value, str)}
        assert int(trailing["retry-after"]) >= 1
        assert trailing["ratelimit-policy"] == '"client";q=3;w=6'
        assert re.fullmatch(r'"client";r=0;t=\d+', trailing["ratelimit"])
        status = rpc_status.from_call(refused)  # type: ignore[arg-type]
        assert status is not None and status.code == code_pb2.RESOURCE_EXHAUSTED
        retry = error_details_pb2.RetryInfo()
        assert any(detail.Unpack(retry) for detail in status.details)
        assert retry.retry_delay.seconds == int(trailing["retry-after"])
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(5):  # health is never limited: it answers (no RpcError)
            await health.Check(health_pb2.HealthCheckRequest(), timeout=10)


async def test_grpc_with_authentication_limits_each_owner_on_its_own(  # type: ignore[no-untyped-def]
    start_service, tmp_path: Path
) -> None:
    key = SigningKey("k-limit", "ES256")
    auth = {
        "AUTH_MODE": "jwt",
        "AUTH_ISSUER": ISSUER,
        "AUTH_AUDIENCE": AUDIENCE,
        "AUTH_JWKS_FILE": str(write_jwks(tmp_path / "jwks.json", key)),
    }
    service = start_service(roles="http,grpc", wait_for_grpc=True, **LIMIT, **auth)
    alice, bob = key.token(sub="alice"), key.token(sub="bob")
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        stub = orders_pb2_grpc.OrderServiceStub(channel)
        assert [await _list(stub, alice) for _ in range(4)][-1] == grpc.StatusCode.RESOURCE_EXHAUSTED
        # the same address, another owner: a bucket of its own
        assert [await _list(stub, bob) for _ in range(3)] == [grpc.StatusCode.OK] * 3
        # no token: refused as such, before the limit counts anything
        assert await _list(stub) == grpc.StatusCode.UNAUTHENTICATED
