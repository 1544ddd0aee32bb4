"""Prometheus metrics, aggregated over every process of the service.

The supervisor gives all role processes one PROMETHEUS_MULTIPROC_DIR; each process records into
its own files there and whichever HTTP worker answers `GET /metrics` merges them, so counters are
the sum over workers, not one random worker's. Labels carry route templates, never raw ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from service.ports import PoolStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "orders_http_requests_total", "HTTP requests by route template, method and status", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "orders_http_request_duration_seconds", "HTTP request latency", ["route", "method"], buckets=LATENCY_BUCKETS
)
GRPC_CALLS = Counter("orders_grpc_calls_total", "gRPC calls by method and status code", ["method", "code"])
GRPC_LATENCY = Histogram("orders_grpc_call_duration_seconds", "gRPC call latency", ["method"], buckets=LATENCY_BUCKETS)
POOL_SIZE = Gauge("orders_db_pool_size", "Open database connections", ["role"], multiprocess_mode="livesum")
POOL_IN_USE = Gauge("orders_db_pool_in_use", "Database connections in use", ["role"], multiprocess_mode="livesum")
POOL_MAX = Gauge("orders_db_pool_max_size", "Configured pool capacity", ["role"], multiprocess_mode="livesum")
POOL_WAITING = Gauge(
    "orders_db_pool_waiting", "Requests waiting for a connection", ["role"], multiprocess_mode="livesum"
)
POOL_WAITS = Counter("orders_db_pool_waits_total", "Acquires that found no idle connection", ["role"])
POOL_TIMEOUTS = Counter("orders_db_pool_acquire_timeouts_total", "Acquires that timed out", ["role"])
POOL_SHED = Counter(
    "orders_db_pool_shed_total", "Requests refused at once because too many waited for a connection", ["role"]
)
DEPENDENCY_UP = Gauge(
    "orders_dependency_up",
    "1 while this role's last background check of the dependency succeeded (lowest over processes)",
    ["role", "dependency"],
    multiprocess_mode="livemin",
)

ExtraMetrics = Callable[[], Awaitable[bytes]]


class PoolGauges:
    """Publishes one process's pool figures; called periodically by the process that owns the pool."""

    def __init__(self, role: str, stats: Callable[[], PoolStats]) -> None:
        self._role = role
        self._stats = stats
        self._waits_seen = 0
        self._timeouts_seen = 0
        self._shed_seen = 0

    def publish(self) -> None:
        stats = self._stats()
        POOL_SIZE.labels(self._role).set(stats.size)
        POOL_IN_USE.labels(self._role).set(stats.in_use)
        POOL_MAX.labels(self._role).set(stats.max_size)
        POOL_WAITING.labels(self._role).set(stats.waiting)
        POOL_WAITS.labels(self._role).inc(stats.waits_total - self._waits_seen)
        POOL_TIMEOUTS.labels(self._role).inc(stats.acquire_timeouts_total - self._timeouts_seen)
        POOL_SHED.labels(self._role).inc(stats.shed_total - self._shed_seen)
        self._waits_seen = stats.waits_total
        self._timeouts_seen = stats.acquire_timeouts_total
        self._shed_seen = stats.shed_total


def dependency_gauge(role: str) -> Callable[[str, bool], None]:
    """Records a background check's outcome as `orders_dependency_up{role, dependency}`."""

    def record(dependency: str, up: bool) -> None:
        DEPENDENCY_UP.labels(role, dependency).set(1 if up else 0)

    return record


class PrometheusMetrics:
    """Records each REST request and gRPC call (`CallMetrics`) and renders the merged exposition."""

    def __init__(self, extra: ExtraMetrics | None = None, multiprocess_dir: str | None = None) -> None:
        self._extra = extra
        self._multiprocess_dir = multiprocess_dir  # Settings.prometheus_multiproc_dir

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        HTTP_REQUESTS.labels(route, method, str(status)).inc()
        HTTP_LATENCY.labels(route, method).observe(seconds)

    def observe_grpc(self, method: str, code: str, seconds: float) -> None:
        GRPC_CALLS.labels(method, code).inc()
        GRPC_LATENCY.labels(method).observe(seconds)

    async def render(self) -> tuple[str, bytes]:
        directory = self._multiprocess_dir
        if directory is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            body = generate_latest(registry)
        else:
            body = generate_latest()
        if self._extra is not None:
            body += await self._extra()
        return CONTENT_TYPE_LATEST, body


def mark_process_dead(pid: int, directory: str | None) -> None:
    if directory is not None:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def publish_periodically(loop: asyncio.AbstractEventLoop, gauges: PoolGauges, interval: float = 2.0) -> None:
    """Publish now and then every `interval` seconds on `loop` (a timer, not a task)."""

    def tick() -> None:
        gauges.publish()
        loop.call_later(interval, tick)

    loop.call_soon(tick)
