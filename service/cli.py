"""`orders-service serve|migrate|role` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from service.config import (
    DEFAULT_DATABASE_URL,
    ROLES,
    ConfigError,
    Settings,
    cursor_keys,
    load_settings,
    redact_url,
)
from service.process_exit import run_then_exit
from service.setting_files import check_files

log = logging.getLogger("orders.cli")


def _settings_or_exit(**overrides: object) -> Settings:
    try:
        return load_settings(None, **overrides)
    except ConfigError as exc:
        print(f"orders-service: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _check_start(settings: Settings) -> None:
    """What `serve` checks once before starting roles: readable files, a usable JWKS; and a warning
    when anyone who reaches the ports may do anything."""
    try:
        check_files(settings)
        if settings.auth_mode == "jwt":
            from service.auth.keys import JwksError, file_loader, load_keys, url_loader

            variable = "AUTH_JWKS_FILE" if settings.auth_jwks_file else "AUTH_JWKS_URL"
            source = settings.auth_jwks_file or settings.auth_jwks_url or ""
            try:
                load_keys(file_loader(source) if settings.auth_jwks_file else url_loader(source))
            except (OSError, JwksError) as exc:
                raise ConfigError(f"{variable}={source!r}: no usable JWKS ({exc})") from None
    except ConfigError as exc:
        print(f"orders-service: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if settings.auth_mode == "none" and settings.bind not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "AUTH_MODE=none while listening beyond loopback: every caller may read and change every order",
            extra={"bind": settings.bind},
        )


def _resolve_dependencies(settings: Settings) -> tuple[Settings, object | None]:
    """Fill DATABASE_URL/REDIS_URL from local servers or embedded ones when unset."""
    force_embedded = settings.force_embedded
    if settings.database_url and settings.redis_url and not force_embedded:
        return settings, None
    from service.devservers import resolve_services

    services = resolve_services(
        Path(settings.data_dir).resolve(),
        database_name="orders",
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        force_embedded=force_embedded,
    )
    if services.embedded:
        log.info("embedded servers started", extra={"embedded": services.embedded})
    import msgspec

    resolved = msgspec.structs.replace(
        settings,
        database_url=services.database_url if force_embedded else settings.database_url or services.database_url,
        redis_url=services.redis_url if force_embedded else settings.redis_url or services.redis_url,
    )
    return resolved, services


def _migrate(settings: Settings) -> None:
    from service.store.migrator import migrate

    applied = asyncio.run(migrate(settings.database_url or DEFAULT_DATABASE_URL))
    log.info("migrations up to date", extra={"applied": applied})


def cmd_serve(args: argparse.Namespace) -> int:
    from service.observability.logging import configure_logging
    from service.supervisor import Supervisor

    overrides: dict[str, object] = {}
    if args.roles:
        from service.config import _roles

        try:
            overrides["roles"] = _roles("--roles", args.roles)
        except ConfigError as exc:
            print(f"orders-service: {exc}", file=sys.stderr)
            return 2
    settings = _settings_or_exit(**overrides)
    try:
        cursor_keys(settings)  # fail at start, not at the first page; makes the local key once
    except ConfigError as exc:
        print(f"orders-service: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, role="supervisor")
    _check_start(settings)
    settings, services = _resolve_dependencies(settings)
    log.info(
        "starting",
        extra={
            "roles": list(settings.roles),
            "database_url": redact_url(settings.database_url),
            "redis_url": redact_url(settings.redis_url),
            "http_port": settings.port,
        },
    )
    metrics_dir = None
    own_heartbeat_dir = None
    try:
        if settings.migrate_on_start:
            _migrate(settings)
        env = dict(os.environ)
        metrics_dir = tempfile.mkdtemp(prefix="orders-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        env["DATABASE_URL"] = settings.database_url or ""
        env["REDIS_URL"] = settings.redis_url or ""
        env["ROLES"] = ",".join(settings.roles)
        heartbeat_dir = settings.heartbeat_dir
        if heartbeat_dir is None:
            heartbeat_dir = own_heartbeat_dir = tempfile.mkdtemp(prefix="orders-heartbeat-")
        Path(heartbeat_dir).mkdir(parents=True, exist_ok=True)
        counts = {
            "http": 1,
            "grpc": settings.grpc_workers,
            "worker": settings.worker_processes,
        }
        from service.entrypoints.roles import ROLE_RUNNERS

        role_counts = {role: counts[role] for role in settings.roles if role in ROLE_RUNNERS}
        admin = (settings.admin_bind, settings.pprof_port) if settings.pprof_port else None
        supervisor = Supervisor(
            role_counts,
            env,
            settings.shutdown_timeout,
            metrics_dir=metrics_dir,
            py_spy=settings.py_spy,
            heartbeat_dir=heartbeat_dir,
            heartbeat_timeout=settings.worker_heartbeat_timeout,
        )
        return supervisor.run(admin=admin)
    finally:
        for directory in (metrics_dir, own_heartbeat_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
        if services is not None:
            services.stop()  # type: ignore[attr-defined]


def cmd_migrate(_args: argparse.Namespace) -> int:
    from service.observability.logging import configure_logging

    settings = _settings_or_exit()
    configure_logging(settings.log_level, role="migrate")
    settings, services = _resolve_dependencies(settings)
    try:
        _migrate(settings)
    finally:
        if services is not None:
            services.stop()  # type: ignore[attr-defined]
    return 0


def _stop_with_parent() -> None:
    """Linux: get SIGTERM when the supervisor dies, so a killed supervisor leaves no orphans."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        raise SystemExit(0)


def cmd_role(args: argparse.Namespace) -> int:
    from service.entrypoints.roles import ROLE_RUNNERS
    from service.observability.logging import configure_logging

    _stop_with_parent()
    settings = _settings_or_exit()
    configure_logging(settings.log_level, role=args.role)
    import native

    log.info("role process starting", extra={"native": native.ACTIVE, "pid": os.getpid()})
    ROLE_RUNNERS[args.role](settings)
    return 0


def cmd_worker_alive(args: argparse.Namespace) -> int:
    """Exit 0 when every worker heartbeat file in HEARTBEAT_DIR is fresh (the worker's liveness probe)."""
    from service.events import heartbeat

    settings = _settings_or_exit()
    if settings.heartbeat_dir is None:
        print("orders-service worker-alive: HEARTBEAT_DIR is not set", file=sys.stderr)
        return 2
    max_age = args.max_age if args.max_age is not None else 2 * settings.worker_heartbeat_timeout
    files = sorted(Path(settings.heartbeat_dir).glob("worker-*.beat"))
    ages = {path.name: heartbeat.age(path) for path in files}
    stale = {name: age for name, age in ages.items() if age is None or age > max_age}
    if not files or stale:
        detail = ", ".join(f"{name} {age:.0f} s" for name, age in stale.items() if age is not None)
        print(f"orders-service worker-alive: {detail or 'no heartbeat file'} (limit {max_age:.0f} s)", file=sys.stderr)
        return 1
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "benchmarks" / "load.py").exists() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        from benchmarks.load import main as loadtest_main
    except ImportError:
        print("orders-service loadtest: run it from a source checkout (benchmarks/ is not installed)", file=sys.stderr)
        return 2
    code: int = loadtest_main(args.loadtest_args)
    return code


def cmd_dev_keys(args: argparse.Namespace) -> int:
    from service.auth.devkeys import DEV_AUDIENCE, DEV_ISSUER, write_dev_keys

    settings = _settings_or_exit()
    key_path, jwks_path, made = write_dev_keys(settings.data_dir, replace=args.replace)
    print(f"{'wrote' if made else 'kept'} {key_path} (private; keep it out of images and repositories)")
    print(f"{'wrote' if made else 'kept'} {jwks_path}")
    print("serve with:")
    print(
        f"  AUTH_MODE=jwt AUTH_ISSUER={DEV_ISSUER} AUTH_AUDIENCE={DEV_AUDIENCE} "
        f"AUTH_JWKS_FILE={jwks_path.resolve()} orders-service serve"
    )
    return 0


def cmd_dev_token(args: argparse.Namespace) -> int:
    from service.auth.devkeys import dev_token

    settings = _settings_or_exit()
    try:
        token = dev_token(
            settings.data_dir,
            subject=args.sub,
            scope=args.scope,
            ttl_seconds=args.ttl,
            issuer=args.issuer or settings.auth_issuer or "orders-service-dev",
            audience=args.audience or settings.auth_audience or "orders-service",
        )
    except FileNotFoundError:
        print(
            "orders-service dev-token: no dev key under DATA_DIR: run `orders-service dev-keys` first", file=sys.stderr
        )
        return 2
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orders-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the service (supervisor + role processes)")
    serve.add_argument("--roles", help="comma-separated subset of http,grpc,worker (default: ROLES or all)")
    serve.set_defaults(func=cmd_serve)
    migrate = commands.add_parser("migrate", help="apply pending database migrations and exit")
    migrate.set_defaults(func=cmd_migrate)
    role = commands.add_parser("role", help="internal: run one role process (started by serve)")
    role.add_argument("role", choices=list(ROLES))
    role.set_defaults(func=cmd_role)
    dev_keys = commands.add_parser("dev-keys", help="write a local signing key and its JWKS under DATA_DIR")
    dev_keys.add_argument("--replace", action="store_true", help="make a new key even if one exists")
    dev_keys.set_defaults(func=cmd_dev_keys)
    dev_token = commands.add_parser("dev-token", help="print a bearer token signed by the dev-keys key")
    dev_token.add_argument("--sub", required=True, help="the subject (and, by default, the owner)")
    dev_token.add_argument("--scope", default="orders:read orders:write", help="space-separated scopes")
    dev_token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    dev_token.add_argument("--issuer", help="iss (default: AUTH_ISSUER, else orders-service-dev)")
    dev_token.add_argument("--audience", help="aud (default: AUTH_AUDIENCE, else orders-service)")
    dev_token.set_defaults(func=cmd_dev_token)
    alive = commands.add_parser(
        "worker-alive", help="exit 0 when the worker processes' heartbeats are fresh (liveness probe)"
    )
    alive.add_argument(
        "--max-age", type=float, help="seconds a heartbeat may be old (default: 2 x WORKER_HEARTBEAT_TIMEOUT)"
    )
    alive.set_defaults(func=cmd_worker_alive)
    loadtest = commands.add_parser("loadtest", help="drive load at a running service (see --help)", add_help=False)
    loadtest.add_argument("loadtest_args", nargs=argparse.REMAINDER)
    loadtest.set_defaults(func=cmd_loadtest)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadtest"]:  # its options belong to the load-test tool's own parser
        return cmd_loadtest(argparse.Namespace(loadtest_args=argv[1:]))
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


def run() -> NoReturn:
    """The console script: `main`, then exit without finalizing the interpreter (see process_exit)."""
    run_then_exit(main)


if __name__ == "__main__":
    run()
