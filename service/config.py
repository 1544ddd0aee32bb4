"""Settings from the environment, validated once, with a one-line error naming the variable."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import overload
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import msgspec

from service.store.database import tls_options

# Where PostgreSQL and Redis are when DATABASE_URL / REDIS_URL are unset: the local default ports.
LOCAL_POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/orders"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ROLES = ("http", "grpc", "worker")
AUTH_MODES = ("none", "jwt")


class ConfigError(Exception):
    """A bad environment variable; the message names it and says what is expected."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    port: int = 8080
    grpc_port: int = 9090
    pprof_port: int = 6060
    bind: str = "0.0.0.0"  # noqa: S104 - a service container must listen beyond loopback
    admin_bind: str = "127.0.0.1"
    database_url: str | None = None  # None: local default or an embedded server
    redis_url: str | None = None
    http_workers: int = 1
    grpc_workers: int = 2  # a grpc.aio process is bound to one core by its main thread: 2 measured faster than 1
    worker_processes: int = 1
    db_pool_size: int = 10
    db_acquire_timeout: float = 2.0
    db_statement_timeout: float = 5.0  # 0: no limit
    db_max_waiting: int = 0  # requests queued for a connection before the next is shed; 0: 4 x pool
    http_backpressure: int = 1024  # connections in flight per granian worker before it accepts no more
    grpc_max_concurrent_rpcs: int = 256  # calls in flight per gRPC process; beyond: RESOURCE_EXHAUSTED
    grpc_reflection: bool = True
    rate_limit_rps: float = 0.0  # per client address; 0: off
    rate_limit_burst: int = 0  # 0: max(1, 2 x RATE_LIMIT_RPS)
    worker_heartbeat_timeout: float = 30.0
    heartbeat_dir: str | None = None  # None: a fresh directory per `serve`
    log_level: str = "INFO"
    shutdown_timeout: float = 25.0
    migrate_on_start: bool = True
    roles: tuple[str, ...] = ROLES
    idempotency_ttl_seconds: int = 86400
    # Comma-separated keys, each >= 32 bytes: the first signs page cursors, all verify (rotation).
    # None: a key generated once under DATA_DIR (local use), unless REQUIRE_CURSOR_SECRET.
    cursor_secret: str | None = None
    require_cursor_secret: bool = False  # the image sets it: a deployment must bring its own key
    data_dir: str = ".data"
    max_body_bytes: int = 64 * 1024
    # events (outbox relay + stream consumer, the worker role)
    events_stream: str = "orders"
    stream_maxlen: int = 1_000_000
    consumer_group: str = "order-processors"
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    retry_backoff_ms: int = 1000
    relay_batch_size: int = 500
    coalesce_max_batch: int = 256
    coalesce_max_in_flight: int = 1  # statements of one kind running at once per process (measured: 1 beats 2)
    relay_poll_interval: float = 1.0
    events_linger: float = 0.01  # seconds the relay and the consumer let a busy round's successors gather
    purge_interval: float = 60.0
    outbox_retention: float = 0.0  # seconds published outbox rows are kept; 0: deleted once published
    # watchers (GET /orders/changes, WatchOrders)
    watch_buffer: int = 1000
    watch_heartbeat: float = 15.0
    # tracing (opt-in): OTLP/HTTP collector base URL; None: no OpenTelemetry at all
    otel_exporter_otlp_endpoint: str | None = None
    otel_service_name: str = "orders-service"
    # who may do what: bearer JWTs verified against a JWKS (AUTH_MODE=jwt), or one anonymous owner
    auth_mode: str = "none"
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_jwks_file: str | None = None
    auth_jwks_url: str | None = None
    auth_jwks_refresh: float = 300.0
    auth_leeway: float = 30.0
    auth_owner_claim: str = "sub"
    # TLS of REST and gRPC (both or neither); a client CA makes both require client certificates
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    # Not operator settings (see _INTERNAL_PARSERS): set by the supervisor, or developer switches.
    prometheus_multiproc_dir: str | None = None
    heartbeat_file: str | None = None  # this worker process's heartbeat file
    py_spy: str | None = None  # None: the py-spy beside the interpreter, else on PATH
    force_embedded: bool = False


@overload
def redact_url(url: str) -> str: ...
@overload
def redact_url(url: None) -> None: ...
def redact_url(url: str | None) -> str | None:
    """The URL with any password replaced by ***, safe for logs."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable url>"
    if not password:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


def with_database(url: str, database_name: str) -> str:
    """`url` with its path (the database) replaced by `database_name`."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database_name}"))


def _int(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{name}={value} is out of range ({lo}..{hi})")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{name}={value} is out of range ({lo}..{hi})")
        return value

    return parse


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (true/false)")


def _url(*schemes: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes:
            raise ConfigError(f"{name}={redact_url(raw)!r} must be a URL with scheme {' or '.join(schemes)}")
        return raw

    return parse


def _database_url(name: str, raw: str) -> str:
    """A postgres(ql):// URL whose TLS options the driver takes (store.database.tls_options)."""
    _url("postgres", "postgresql")(name, raw)
    try:
        tls_options(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return raw


def _redis_url(name: str, raw: str) -> str:
    """A redis://, rediss:// or unix:// URL; redis-py's `ssl_*` query options (`ssl_ca_certs`: the
    CA file to verify the server's certificate with) only with rediss://, where they take effect."""
    _url("redis", "rediss", "unix")(name, raw)
    parts = urlsplit(raw)
    ssl_options = [key for key, _ in parse_qsl(parts.query) if key.startswith("ssl_")]
    if ssl_options and parts.scheme != "rediss":
        raise ConfigError(f"{name}: {', '.join(ssl_options)} need a rediss:// URL (TLS)")
    return raw


def _otlp_endpoint(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={redact_url(raw)!r} must be an http(s) URL such as http://127.0.0.1:4318")
    from service.observability.tracing import tracing_installed

    if not tracing_installed():
        raise ConfigError(f"{name} is set but OpenTelemetry is not installed: pip install 'orders-service[tracing]'")
    return raw


def _log_level(name: str, raw: str) -> str:
    level = raw.strip().upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{name}={raw!r} must be one of {', '.join(LOG_LEVELS)}")
    return level


def _roles(name: str, raw: str) -> tuple[str, ...]:
    roles = tuple(r.strip() for r in raw.split(",") if r.strip())
    unknown = [r for r in roles if r not in ROLES]
    if not roles or unknown:
        raise ConfigError(f"{name}={raw!r} must be a comma-separated subset of {','.join(ROLES)}")
    return tuple(dict.fromkeys(roles))


def _text(name: str, raw: str) -> str:
    if not raw:
        raise ConfigError(f"{name} must not be empty")
    return raw


def _auth_mode(name: str, raw: str) -> str:
    mode = raw.strip().lower()
    if mode not in AUTH_MODES:
        raise ConfigError(f"{name}={raw!r} must be one of {', '.join(AUTH_MODES)}")
    return mode


CURSOR_KEY_MIN_BYTES = 32
CURSOR_SECRET_FILE = "cursor-secret"  # noqa: S105 - a file name, not a secret


def _cursor_secret(name: str, raw: str) -> str:
    keys = [key.strip() for key in raw.split(",")]
    for index, key in enumerate(keys):
        size = len(key.encode())
        if size < CURSOR_KEY_MIN_BYTES:
            which = f"key {index + 1} of {len(keys)}" if len(keys) > 1 else "it"
            raise ConfigError(
                f"{name}: {which} is {size} bytes; each comma-separated key must be at least "
                f"{CURSOR_KEY_MIN_BYTES} bytes (e.g. `openssl rand -base64 48`)"
            )
    return ",".join(keys)


def cursor_keys(settings: Settings) -> list[bytes]:
    """The page-cursor keys, signing key first: CURSOR_SECRET's, else (locally) the key kept in
    DATA_DIR/cursor-secret, generated on first use. ConfigError when the key must be given."""
    if settings.cursor_secret is not None:
        return [key.encode() for key in settings.cursor_secret.split(",")]
    if settings.require_cursor_secret:
        raise ConfigError(
            "CURSOR_SECRET is required (REQUIRE_CURSOR_SECRET is set): give one or more keys of 32+ bytes"
        )
    path = Path(settings.data_dir) / CURSOR_SECRET_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(48))
        key = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"CURSOR_SECRET is unset and {path} cannot be created or read ({exc.strerror})") from None
    if len(key.encode()) < CURSOR_KEY_MIN_BYTES:
        raise ConfigError(f"CURSOR_SECRET is unset and {path} holds a key shorter than {CURSOR_KEY_MIN_BYTES} bytes")
    return [key.encode()]


def _port(name: str, raw: str) -> int:
    return _int(0, 65535)(name, raw)


def _one_or_true(_name: str, raw: str) -> bool:
    return raw in ("1", "true")


_PARSERS: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "PORT": ("port", _port),
    "GRPC_PORT": ("grpc_port", _port),
    "PPROF_PORT": ("pprof_port", _port),
    "BIND": ("bind", _text),
    "ADMIN_BIND": ("admin_bind", _text),
    "DATABASE_URL": ("database_url", _database_url),
    "REDIS_URL": ("redis_url", _redis_url),
    "HTTP_WORKERS": ("http_workers", _int(1, 64)),
    "GRPC_WORKERS": ("grpc_workers", _int(1, 64)),
    "WORKER_PROCESSES": ("worker_processes", _int(1, 64)),
    "DB_POOL_SIZE": ("db_pool_size", _int(2, 200)),
    "DB_ACQUIRE_TIMEOUT": ("db_acquire_timeout", _float(0.01, 60.0)),
    "DB_STATEMENT_TIMEOUT": ("db_statement_timeout", _float(0.0, 3600.0)),
    "DB_MAX_WAITING": ("db_max_waiting", _int(0, 100_000)),
    "HTTP_BACKPRESSURE": ("http_backpressure", _int(1, 100_000)),
    "GRPC_MAX_CONCURRENT_RPCS": ("grpc_max_concurrent_rpcs", _int(1, 100_000)),
    "GRPC_REFLECTION": ("grpc_reflection", _bool),
    "RATE_LIMIT_RPS": ("rate_limit_rps", _float(0.0, 1_000_000.0)),
    "RATE_LIMIT_BURST": ("rate_limit_burst", _int(0, 1_000_000)),
    "WORKER_HEARTBEAT_TIMEOUT": ("worker_heartbeat_timeout", _float(2.0, 3600.0)),
    "HEARTBEAT_DIR": ("heartbeat_dir", _text),
    "LOG_LEVEL": ("log_level", _log_level),
    "SHUTDOWN_TIMEOUT": ("shutdown_timeout", _float(0.1, 3600.0)),
    "MIGRATE_ON_START": ("migrate_on_start", _bool),
    "ROLES": ("roles", _roles),
    "IDEMPOTENCY_TTL": ("idempotency_ttl_seconds", _int(1, 30 * 86400)),
    "CURSOR_SECRET": ("cursor_secret", _cursor_secret),
    "REQUIRE_CURSOR_SECRET": ("require_cursor_secret", _bool),
    "DATA_DIR": ("data_dir", _text),
    "EVENTS_STREAM": ("events_stream", _text),
    "STREAM_MAXLEN": ("stream_maxlen", _int(1000, 2**62)),
    "CONSUMER_GROUP": ("consumer_group", _text),
    "CLAIM_IDLE_MS": ("claim_idle_ms", _int(10, 86_400_000)),
    "MAX_DELIVERIES": ("max_deliveries", _int(1, 1000)),
    "RETRY_BACKOFF_MS": ("retry_backoff_ms", _int(10, 3_600_000)),
    "RELAY_BATCH_SIZE": ("relay_batch_size", _int(1, 10_000)),
    "COALESCE_MAX_BATCH": ("coalesce_max_batch", _int(1, 1000)),
    "COALESCE_MAX_IN_FLIGHT": ("coalesce_max_in_flight", _int(1, 64)),
    "RELAY_POLL_INTERVAL": ("relay_poll_interval", _float(0.01, 60.0)),
    "EVENTS_LINGER": ("events_linger", _float(0.0, 1.0)),
    "PURGE_INTERVAL": ("purge_interval", _float(0.1, 86_400.0)),
    "OUTBOX_RETENTION": ("outbox_retention", _float(0.0, 30 * 86_400.0)),
    "WATCH_BUFFER": ("watch_buffer", _int(1, 1_000_000)),
    # The contract promises proxies a comment line at least every 15 s.
    "WATCH_HEARTBEAT": ("watch_heartbeat", _float(1.0, 15.0)),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("otel_exporter_otlp_endpoint", _otlp_endpoint),
    "OTEL_SERVICE_NAME": ("otel_service_name", _text),
    "AUTH_MODE": ("auth_mode", _auth_mode),
    "AUTH_ISSUER": ("auth_issuer", _text),
    "AUTH_AUDIENCE": ("auth_audience", _text),
    "AUTH_JWKS_FILE": ("auth_jwks_file", _text),
    "AUTH_JWKS_URL": ("auth_jwks_url", _url("https", "http")),
    "AUTH_JWKS_REFRESH": ("auth_jwks_refresh", _float(1.0, 86_400.0)),
    "AUTH_LEEWAY": ("auth_leeway", _float(0.0, 600.0)),
    "AUTH_OWNER_CLAIM": ("auth_owner_claim", _text),
    "TLS_CERT_FILE": ("tls_cert_file", _text),
    "TLS_KEY_FILE": ("tls_key_file", _text),
    "TLS_CLIENT_CA_FILE": ("tls_client_ca_file", _text),
}

# Read here too, so that no other module reads the environment, but neither documented nor
# deployed: the supervisor sets PROMETHEUS_MULTIPROC_DIR for its children (and
# ORDERS_HEARTBEAT_FILE for each worker process); PY_SPY (a py-spy binary)
# and ORDERS_EMBEDDED (embedded servers even where local ones answer) are for development and tests.
_INTERNAL_PARSERS: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "PROMETHEUS_MULTIPROC_DIR": ("prometheus_multiproc_dir", _text),
    "ORDERS_HEARTBEAT_FILE": ("heartbeat_file", _text),
    "PY_SPY": ("py_spy", _text),
    "ORDERS_EMBEDDED": ("force_embedded", _one_or_true),
}

ENV_VARIABLES: tuple[str, ...] = tuple(_PARSERS)
# Set but empty is a mistake here, not "use the default": a secret must never fall back silently.
_EMPTY_IS_AN_ERROR = frozenset(("CURSOR_SECRET",))


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read every variable once; raise ConfigError naming the first bad one."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for variable, (field, parse) in (_PARSERS | _INTERNAL_PARSERS).items():
        raw = env.get(variable)
        if raw is None or (raw == "" and variable not in _EMPTY_IS_AN_ERROR):
            continue
        values[field] = parse(variable, raw)
    if "http_workers" not in values:
        values["http_workers"] = os.cpu_count() or 1
    values.update(overrides)
    settings = Settings(**values)  # type: ignore[arg-type]
    _check_auth(settings)
    _check_tls(settings)
    return settings


def _check_auth(settings: Settings) -> None:
    if settings.auth_mode != "jwt":
        return
    if not settings.auth_issuer:
        raise ConfigError("AUTH_ISSUER is required when AUTH_MODE=jwt")
    if not settings.auth_audience:
        raise ConfigError("AUTH_AUDIENCE is required when AUTH_MODE=jwt")
    if bool(settings.auth_jwks_file) == bool(settings.auth_jwks_url):
        raise ConfigError("AUTH_JWKS_FILE or AUTH_JWKS_URL (one of them) is required when AUTH_MODE=jwt")


def _check_tls(settings: Settings) -> None:
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        missing = "TLS_KEY_FILE" if settings.tls_cert_file else "TLS_CERT_FILE"
        raise ConfigError(f"{missing} is required with {'TLS_CERT_FILE' if settings.tls_cert_file else 'TLS_KEY_FILE'}")
    if settings.tls_client_ca_file and not settings.tls_cert_file:
        raise ConfigError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE (client certificates need TLS)")
