"""GET /metrics merges every worker's figures and parses as Prometheus text."""

from __future__ import annotations

import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_every_request_across_workers(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service(HTTP_WORKERS="2")
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
    assert ("orders_db_pool_max_size", frozenset({"role": "http"}.items())) in samples
