"""Readiness from background state, load shedding, rate limits, bounded labels and the JSON-only
body rule, on the REST core and the gRPC status mapping (no server, no sockets)."""

from __future__ import annotations

import asyncio

import grpc
import msgspec
import pytest

from service.domain import StoreOverloaded, StoreUnavailable
from service.grpc.servicer import peer_address
from service.grpc.status import status_for
from service.http.api import HttpRequest, RestApi
from service.observability.readiness import DependencyMonitor
from service.ratelimit import RateLimited, RateLimiter
from tests.unit.fakes import make_service
from tests.unit.test_calls import RecordingMetrics, access_lines  # noqa: F401 - the fixture

BODY = b'{"product": "a", "quantity": 1}'


def make_api(**options: object) -> RestApi:
    return RestApi(
        make_service()[0],
        json_endpoints={},
        openapi_document=b"{}",
        max_body_bytes=1024,
        **options,  # type: ignore[arg-type]
    )


# ---- readiness ---------------------------------------------------------------------------------


class Switch:
    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if not self.up:
            raise ConnectionError("db.internal:5432 refused")


async def test_ready_reads_background_state_and_only_postgres_decides() -> None:
    postgres, redis = Switch(), Switch()
    outcomes: list[tuple[str, bool]] = []
    monitor = DependencyMonitor(
        {"postgres": postgres, "redis": redis},
        required=("postgres",),
        on_outcome=lambda name, up: outcomes.append((name, up)),
    )
    api = make_api(readiness=monitor)

    unchecked = await api.handle(HttpRequest("GET", "/ready", "", {}))
    assert unchecked.status == 503
    assert msgspec.json.decode(unchecked.body)["checks"] == {"postgres": "unknown", "redis": "unknown"}

    await monitor.refresh()
    redis.up = False
    await monitor.refresh()
    calls = postgres.calls
    response = await api.handle(HttpRequest("GET", "/ready", "", {}))
    assert postgres.calls == calls, "the probe ran a check instead of reading the state"
    assert response.status == 200
    assert msgspec.json.decode(response.body) == {"status": "ok", "checks": {"postgres": "ok", "redis": "unavailable"}}
    assert ("redis", False) in outcomes

    postgres.up = False
    await monitor.refresh()
    response = await api.handle(HttpRequest("GET", "/ready", "", {}))
    assert response.status == 503
    assert dict(response.headers)["retry-after"] in {"1", "2", "3"}
    assert b"refused" not in response.body and b"db.internal" not in response.body  # no exception text


async def test_a_hanging_check_is_unavailable_after_its_timeout() -> None:
    async def hangs() -> None:
        await asyncio.sleep(3600)

    monitor = DependencyMonitor({"postgres": hangs}, required=("postgres",), timeout=0.05)
    await monitor.refresh()
    assert monitor.snapshot() == (False, {"postgres": "unavailable"})


def test_a_required_dependency_needs_a_check() -> None:
    with pytest.raises(ValueError, match="postgres"):
        DependencyMonitor({}, required=("postgres",))


# ---- load shedding -----------------------------------------------------------------------------


class OverloadedService:
    async def get(self, order_id: str, *, ctx: object = None) -> None:
        raise StoreOverloaded("too many waiting")


async def test_overload_is_an_immediate_503_with_a_jittered_retry_after() -> None:
    api = RestApi(OverloadedService(), json_endpoints={}, openapi_document=b"{}", max_body_bytes=1)  # type: ignore[arg-type]
    seen = set()
    for _ in range(60):
        response = await api.handle(HttpRequest("GET", "/orders/x", "", {}))
        assert response.status == 503
        assert msgspec.json.decode(response.body)["type"].endswith("/overloaded")
        seen.add(dict(response.headers)["retry-after"])
    assert seen <= {"1", "2", "3"} and len(seen) > 1, seen


def test_grpc_maps_overload_to_resource_exhausted_and_outage_to_unavailable() -> None:
    assert status_for(StoreOverloaded("x"), "r").code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for(StoreUnavailable("x"), "r").code == grpc.StatusCode.UNAVAILABLE


# ---- rate limits -------------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_the_rate_and_is_bounded_in_keys() -> None:
    clock = FakeTime()
    limiter = RateLimiter(2.0, 3, max_keys=2, clock=clock)
    assert [limiter.take("a").allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.take("a")
    assert refused.retry_after_seconds == 1 and refused.remaining == 0
    clock.now += 0.5
    assert limiter.take("a").allowed
    limiter.take("b")
    limiter.take("c")
    assert len(limiter) == 2  # "a", the least recently seen, was dropped


async def test_rate_limit_answers_429_with_ratelimit_headers_per_client_address() -> None:
    api = make_api(rate_limiter=RateLimiter(1.0, 2, clock=FakeTime()))

    def get(client: str) -> HttpRequest:
        return HttpRequest("GET", "/orders", "", {}, client=client)

    first = await api.handle(get("10.0.0.1"))
    assert first.status == 200
    headers = dict(first.headers)
    assert headers["ratelimit-policy"] == '"client";q=2;w=2'
    assert headers["ratelimit"] == '"client";r=1;t=1'
    assert (await api.handle(get("10.0.0.1"))).status == 200
    refused = await api.handle(get("10.0.0.1"))
    assert refused.status == 429
    assert msgspec.json.decode(refused.body)["status"] == 429
    headers = dict(refused.headers)
    assert headers["retry-after"] == "1" and headers["ratelimit"] == '"client";r=0;t=2'
    assert (await api.handle(get("10.0.0.2"))).status == 200  # another client has its own bucket
    for _ in range(5):  # probes and scrapes are never limited
        assert (await api.handle(HttpRequest("GET", "/health", "", {}, client="10.0.0.1"))).status == 200


def test_grpc_maps_a_rate_limit_to_resource_exhausted_with_the_same_hints() -> None:
    limiter = RateLimiter(1.0, 1, clock=FakeTime())
    limiter.admit("10.0.0.1")
    with pytest.raises(RateLimited) as caught:
        limiter.admit("10.0.0.1")
    status = status_for(caught.value, "r")
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(status.trailing_metadata)
    assert trailing["retry-after"] == "1" and trailing["ratelimit-policy"] == '"client";q=1;w=1'
    assert trailing["ratelimit"] == '"client";r=0;t=1' and "grpc-status-details-bin" in trailing


@pytest.mark.parametrize(
    ("peer", "address"),
    [("ipv4:10.0.0.1:5678", "10.0.0.1"), ("ipv6:[::1]:5678", "::1"), ("unix:/tmp/s", "unix:/tmp/s")],
)
def test_grpc_peer_address_drops_the_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address


async def test_no_rate_limit_headers_when_off() -> None:
    response = await make_api().handle(HttpRequest("GET", "/orders", "", {}, client="10.0.0.1"))
    assert not {"ratelimit", "ratelimit-policy"} & dict(response.headers).keys()


# ---- bounded labels ----------------------------------------------------------------------------


async def test_unknown_methods_are_other_in_metrics_and_access_lines(access_lines) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    metrics = RecordingMetrics()
    api = make_api(metrics=metrics)
    for n in range(50):
        await api.handle(HttpRequest(f"M{n}", "/orders", "", {}))
    await api.handle(HttpRequest("GET", "/health", "", {}))
    assert {method for _, method, _ in metrics.http} == {"_OTHER", "GET"}
    assert {line["method"] for line in access_lines.lines()} == {"_OTHER", "GET"}


# ---- JSON bodies only --------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_a_body_without_a_json_content_type_is_415(method: str, content_type: str | None) -> None:
    api = make_api()
    created = await api.handle(HttpRequest("POST", "/orders", "", {"content-type": "application/json"}, BODY))
    path = "/orders" if method == "POST" else f"/orders/{msgspec.json.decode(created.body)['id']}"
    headers = {} if content_type is None else {"content-type": content_type}
    response = await api.handle(HttpRequest(method, path, "", headers, BODY))
    assert response.status == 415, response.body
    ok = await api.handle(HttpRequest(method, path, "", {"content-type": "application/json; charset=utf-8"}, BODY))
    assert ok.status in (200, 201)
