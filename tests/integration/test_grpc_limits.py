"""The gRPC server's own limits over a real socket: concurrent calls, reflection switch, health
from the injected (background) check. The order service is a fake that can be held."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.grpc.pb import orders_pb2, orders_pb2_grpc
from service.grpc.server import GrpcServer
from service.grpc.servicer import OrderServicer
from tests.unit.fakes import make_service

pytestmark = pytest.mark.integration


class HeldService:
    """`get` waits until released, so calls stay in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0
        self._real = make_service()[0]

    async def get(self, order_id: str, *, ctx: object = None) -> object:
        self.entered += 1
        await self.release.wait()
        return await self._real.get(order_id)


class Flag:
    def __init__(self) -> None:
        self.ready = True

    async def __call__(self) -> None:
        if not self.ready:
            raise RuntimeError("not ready")


@asynccontextmanager
async def _serve(server: GrpcServer) -> AsyncIterator[str]:
    port = server.add_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=0.1)


async def test_calls_beyond_max_concurrent_rpcs_are_resource_exhausted() -> None:
    held = HeldService()
    server = GrpcServer(OrderServicer(held, max_in_flight=2), check=Flag())  # type: ignore[arg-type]
    async with _serve(server) as target, grpc.aio.insecure_channel(target) as channel:
        health_watcher = asyncio.ensure_future(server.watch_health())
        stub = orders_pb2_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]
        request = orders_pb2.GetOrderRequest(id="01a23aad-4a32-73b6-94fe-35ee1044148c")
        in_flight = [asyncio.ensure_future(stub.GetOrder(request, timeout=30)) for _ in range(2)]
        while held.entered < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetOrder(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Health is never shed: a busy process must not fail its own readiness probe.
        health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        checked = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        health_watcher.cancel()
        held.release.set()
        for call in in_flight:  # the held calls finish normally (the order does not exist)
            with pytest.raises(grpc.aio.AioRpcError) as answered:
                await call
            assert answered.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("enabled", [True, False])
async def test_reflection_can_be_switched_off(enabled: bool) -> None:
    server = GrpcServer(OrderServicer(make_service()[0]), check=Flag(), reflection_enabled=enabled)
    async with _serve(server) as target, grpc.aio.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        try:
            replies = [reply async for reply in call]
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            replies, code = [], exc.code()
        if enabled:
            names = {s.name for s in replies[0].list_services_response.service}
            assert "orders.OrderService" in names
        else:
            assert code == grpc.StatusCode.UNIMPLEMENTED


async def test_health_follows_the_injected_check() -> None:
    flag = Flag()
    server = GrpcServer(OrderServicer(make_service()[0]), check=flag)
    async with _serve(server) as target:
        watcher = asyncio.create_task(server.watch_health())
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)

                async def status() -> int:
                    return (await stub.Check(health_pb2.HealthCheckRequest(service=""))).status  # type: ignore[no-any-return]

                async def becomes(expected: int) -> None:
                    while await status() != expected:
                        await asyncio.sleep(0.05)

                await asyncio.wait_for(becomes(health_pb2.HealthCheckResponse.SERVING), 10)
                flag.ready = False
                await asyncio.wait_for(becomes(health_pb2.HealthCheckResponse.NOT_SERVING), 10)
        finally:
            watcher.cancel()
