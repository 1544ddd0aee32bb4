"""GET /metrics merges every worker's figures and parses as Prometheus text."""

from __future__ import annotations

import time
import uuid

import grpc
import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from service.grpc.pb import orders_pb2, orders_pb2_grpc
from tests.e2e.conftest import ServiceProcess


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _grpc_calls(service: ServiceProcess, order_id: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        stub = orders_pb2_grpc.OrderServiceStub(channel)
        for _ in range(2):
            stub.GetOrder(orders_pb2.GetOrderRequest(id=order_id), timeout=10)
        with pytest.raises(grpc.RpcError):
            stub.GetOrder(orders_pb2.GetOrderRequest(id=str(uuid.uuid4())), timeout=10)


def test_metrics_count_every_request_across_workers(start_service, test_services) -> None:  # type: ignore[no-untyped-def]
    service = start_service(roles="http,grpc,worker", wait_for_grpc=True, HTTP_WORKERS="2")
    with httpx.Client(base_url=service.base_url, timeout=10) as client:
        before = _samples(client.get("/metrics").text)
        for _ in range(40):  # new connections, so both workers answer some
            httpx.get(f"{service.base_url}/health")
        order = client.post("/orders", json={"product": "m", "quantity": 1}).json()
        for _ in range(7):
            client.get(f"/orders/{order['id']}")
        for _ in range(3):
            client.get(f"/orders/{uuid.uuid4()}")
        client.get("/no/such/path")
        _grpc_calls(service, order["id"])
        time.sleep(2.5)  # pool gauges are published every 2 s by each process
        text = client.get("/metrics").text
    samples = _samples(text)

    def count(route: str, method: str, status: str) -> float:
        key = ("orders_http_requests_total", frozenset({"route": route, "method": method, "status": status}.items()))
        return samples.get(key, 0.0) - before.get(key, 0.0)

    assert count("/health", "GET", "200") == 40
    assert count("/orders", "POST", "201") == 1
    assert count("/orders/{id}", "GET", "200") == 7
    assert count("/orders/{id}", "GET", "404") == 3
    assert count("unmatched", "GET", "404") == 1
    histogram_count = samples[
        ("orders_http_request_duration_seconds_count", frozenset({"route": "/orders/{id}", "method": "GET"}.items()))
    ]
    assert histogram_count == 10
    assert order["id"] not in text, "raw ids must never become label values"
    for role in ("http", "grpc", "worker"):
        assert ("orders_db_pool_max_size", frozenset({"role": role}.items())) in samples, role

    def grpc_count(method: str, code: str) -> float:
        key = ("orders_grpc_calls_total", frozenset({"method": method, "code": code}.items()))
        return samples.get(key, 0.0) - before.get(key, 0.0)

    assert grpc_count("GetOrder", "OK") == 2
    assert grpc_count("GetOrder", "NOT_FOUND") == 1
    assert samples[("orders_grpc_call_duration_seconds_count", frozenset({"method": "GetOrder"}.items()))] == 3
    redis.Redis.from_url(test_services.redis_url).delete(service.stream)
