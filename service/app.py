"""Composition root: the only place that builds pools, adapters and the service and wires them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

import msgspec
import redis.asyncio as aioredis

from service.auth.keys import KeyRing, file_loader, load_keys, url_loader
from service.auth.verifier import JwtAuthenticator
from service.clock import SystemClock, UuidV7Source
from service.config import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, Settings, cursor_keys
from service.cursor import CursorCodec
from service.domain import StoreUnavailable
from service.events.consumer import Consumer
from service.events.heartbeat import no_beat
from service.events.metrics import EventsMetrics
from service.events.redis_publisher import RedisStreamPublisher
from service.events.relay import Relay
from service.events.stream import StreamNames
from service.events.watch import RedisChangeFeed
from service.http.api import RestApi
from service.http.openapi import openapi_bytes
from service.observability.metrics import PrometheusMetrics, dependency_gauge
from service.observability.readiness import DependencyMonitor
from service.observability.tracing import NO_TRACER, Tracer, TracingUnavailable, tracing_installed
from service.orders import OrderService
from service.ratelimit import RateLimiter
from service.store.database import Database
from service.store.postgres import PostgresOrderStore, PostgresOutbox, TracedPostgresOrderStore

if TYPE_CHECKING:
    from service.grpc.server import GrpcServer

log = logging.getLogger(__name__)


def tracer_for(settings: Settings, role: str) -> Tracer:
    """This process's tracer: `NO_TRACER` unless OTEL_EXPORTER_OTLP_ENDPOINT is set, else a new
    OpenTelemetry provider exporting OTLP/HTTP (call once per process, after it has started)."""
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return NO_TRACER
    if not tracing_installed():
        raise TracingUnavailable(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: "
            "pip install 'orders-service[tracing]'"
        )
    from service.observability.otel import otlp_tracer

    return otlp_tracer(endpoint, service_name=settings.otel_service_name, role=role)


class Resources:
    """What one process owns and must close: its database pool, Redis client and tracer.

    `tracer`: None builds this process's own (a no-op unless OTEL_EXPORTER_OTLP_ENDPOINT is set);
    a given one (tests) is used as is and left open.
    """

    def __init__(self, settings: Settings, *, role: str, tracer: Tracer | None = None) -> None:
        self.settings = settings
        self._owns_tracer = tracer is None
        self.tracer: Tracer = tracer_for(settings, role) if tracer is None else tracer
        self.db = Database(
            settings.database_url or DEFAULT_DATABASE_URL,
            pool_size=settings.db_pool_size,
            acquire_timeout=settings.db_acquire_timeout,
            statement_timeout=settings.db_statement_timeout,
            max_waiting=settings.db_max_waiting,
            application_name=f"orders-service-{role}",
            custom_plans=role == "worker",  # its few batched statements a second: see with_session_settings
        )
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url or DEFAULT_REDIS_URL,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=30,
        )
        # Watchers' change feed: its reader starts with the first watcher.
        self.changes = RedisChangeFeed(self.redis, settings.events_stream, buffer=settings.watch_buffer)
        self.dependencies = build_dependency_monitor(self.db, self.redis, role)
        self._authenticator: JwtAuthenticator | None = None
        self._key_ring: KeyRing | None = None

    def authenticator(self) -> JwtAuthenticator | None:
        """This process's token verifier (AUTH_MODE=jwt), its keys loaded now; None: no authentication.

        A JWKS that cannot be loaded here (it was at start) leaves the keys empty until
        `refresh_keys` loads them: meanwhile every token is refused as invalid.
        """
        settings = self.settings
        if settings.auth_mode != "jwt":
            return None
        if self._authenticator is None:
            assert settings.auth_issuer and settings.auth_audience  # config.py checked them
            load = (
                file_loader(settings.auth_jwks_file)
                if settings.auth_jwks_file
                else url_loader(settings.auth_jwks_url or "")
            )
            try:
                keys = load_keys(load)
            except Exception as exc:  # OSError, JwksError: refresh_keys retries
                log.error("cannot load the JWKS; retrying in the background", extra={"error": str(exc)})
                keys = {}
            self._key_ring = KeyRing(load, settings.auth_jwks_refresh, keys=keys)
            self._authenticator = JwtAuthenticator(
                self._key_ring,
                issuer=settings.auth_issuer,
                audience=settings.auth_audience,
                leeway=settings.auth_leeway,
                owner_claim=settings.auth_owner_claim,
            )
        return self._authenticator

    async def refresh_keys(self) -> None:
        """Keep the JWKS fresh until cancelled (returns at once without authentication)."""
        if self._key_ring is not None:
            await self._key_ring.run()

    async def aclose(self) -> None:
        self.changes.close()
        await self.redis.aclose()
        self.close_sync()

    def close_sync(self) -> None:
        """Close the pool and flush the tracer (what a binding without a running loop can close)."""
        self.changes.close()
        self.db.close()
        if self._owns_tracer:
            self.tracer.shutdown()


# How often each process checks its dependencies in the background, and how long a check may take
# (the probes read the outcome; Kubernetes' probe timeout is 2 s).
DEPENDENCY_CHECK_INTERVAL = 1.0
DEPENDENCY_CHECK_TIMEOUT = 1.0


def build_dependency_monitor(db: Database, redis_client: aioredis.Redis, role: str) -> DependencyMonitor:
    """PostgreSQL decides readiness (REST and gRPC never need Redis: writes go to the outbox);
    Redis is checked and reported too. The PostgreSQL check never queues behind requests."""

    async def check_postgres() -> None:
        await db.probe(recent=2 * DEPENDENCY_CHECK_INTERVAL)

    async def check_redis() -> None:
        await redis_client.ping()

    return DependencyMonitor(
        {"postgres": check_postgres, "redis": check_redis},
        required=("postgres",),
        interval=DEPENDENCY_CHECK_INTERVAL,
        timeout=DEPENDENCY_CHECK_TIMEOUT,
        on_outcome=dependency_gauge(role),
    )


def build_service(
    settings: Settings, db: Database, tracer: Tracer = NO_TRACER, changes: RedisChangeFeed | None = None
) -> OrderService:
    store = (
        TracedPostgresOrderStore(
            db,
            tracer,
            coalesce_max_batch=settings.coalesce_max_batch,
            coalesce_max_in_flight=settings.coalesce_max_in_flight,
        )
        if tracer.enabled
        else PostgresOrderStore(
            db,
            coalesce_max_batch=settings.coalesce_max_batch,
            coalesce_max_in_flight=settings.coalesce_max_in_flight,
        )
    )
    return OrderService(
        store,
        SystemClock(),
        UuidV7Source(),
        CursorCodec(*cursor_keys(settings)),
        idempotency_ttl=timedelta(seconds=settings.idempotency_ttl_seconds),
        changes=changes,
    )


def stream_names(settings: Settings) -> StreamNames:
    return StreamNames(stream=settings.events_stream, group=settings.consumer_group)


def build_outbox(settings: Settings, resources: Resources) -> PostgresOutbox:
    return PostgresOutbox(
        resources.db, settings.database_url or DEFAULT_DATABASE_URL, retention=settings.outbox_retention
    )


def build_relay(settings: Settings, resources: Resources, beat: Callable[[], None] = no_beat) -> Relay:
    return Relay(
        build_outbox(settings, resources),
        RedisStreamPublisher(
            resources.redis, stream_names(settings), maxlen=settings.stream_maxlen, tracer=resources.tracer
        ),
        batch_size=settings.relay_batch_size,
        poll_interval=settings.relay_poll_interval,
        linger=settings.events_linger,
        beat=beat,
    )


def build_consumer(
    settings: Settings, resources: Resources, service: OrderService, beat: Callable[[], None] = no_beat
) -> Consumer:
    return Consumer(
        service,
        resources.redis,
        stream_names(settings),
        claim_idle_ms=settings.claim_idle_ms,
        max_deliveries=settings.max_deliveries,
        retry_backoff_ms=settings.retry_backoff_ms,
        dlq_maxlen=settings.stream_maxlen,
        linger=settings.events_linger,
        tracer=resources.tracer,
        beat=beat,
    )


def build_rest_api(settings: Settings, resources: Resources) -> RestApi:
    db = resources.db
    redis_client = resources.redis

    async def pool_figures() -> bytes:
        return msgspec.json.encode(db.stats())

    events_metrics = EventsMetrics(build_outbox(settings, resources), redis_client, stream_names(settings))

    return RestApi(
        build_service(settings, db, resources.tracer, resources.changes),
        readiness=resources.dependencies,
        json_endpoints={
            "/metrics/db": pool_figures,
            "/metrics/events": events_metrics.json,
        },
        openapi_document=openapi_bytes(secured=settings.auth_mode == "jwt"),
        max_body_bytes=settings.max_body_bytes,
        metrics=PrometheusMetrics(extra=events_metrics.prometheus, multiprocess_dir=settings.prometheus_multiproc_dir),
        tracer=resources.tracer,
        heartbeat_seconds=settings.watch_heartbeat,
        watch_buffer=settings.watch_buffer,
        authenticator=resources.authenticator(),
        rate_limiter=build_rate_limiter(settings),  # per owner; per client address without authentication
    )


def build_rate_limiter(settings: Settings) -> RateLimiter | None:
    """RATE_LIMIT_RPS per client, in bursts of RATE_LIMIT_BURST (default 2 s worth); None: off."""
    rate = settings.rate_limit_rps
    if rate <= 0:
        return None
    return RateLimiter(rate, settings.rate_limit_burst or max(1, round(2 * rate)))


def build_grpc_server(settings: Settings, resources: Resources) -> GrpcServer:
    """The gRPC server of the order service; SERVING while PostgreSQL answered its last background
    check (`resources.dependencies`, which the grpc role runs)."""
    # Imported here: the http and worker roles never load grpc.
    from service.grpc.server import GrpcServer
    from service.grpc.servicer import OrderServicer

    servicer = OrderServicer(
        build_service(settings, resources.db, resources.tracer, resources.changes),
        tracer=resources.tracer,
        metrics=PrometheusMetrics(),
        authenticator=resources.authenticator(),
        rate_limiter=build_rate_limiter(settings),
        max_in_flight=settings.grpc_max_concurrent_rpcs,
    )
    dependencies = resources.dependencies

    async def ready() -> None:
        if not dependencies.snapshot()[0]:
            raise StoreUnavailable("PostgreSQL did not answer the last background check")

    return GrpcServer(
        servicer,
        check=ready,
        reflection_enabled=settings.grpc_reflection,
    )
