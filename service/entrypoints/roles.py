"""The body of each role process the supervisor starts, by role name."""

from __future__ import annotations

from collections.abc import Callable

from service.config import Settings

# Each role imports only its own module (the http role's granian master never loads grpc).


def http_role(settings: Settings) -> None:
    from service.entrypoints.http import run_http

    run_http(settings)


def grpc_role(settings: Settings) -> None:
    from service.entrypoints.grpc import serve

    serve(settings)


def worker_role(settings: Settings) -> None:
    from service.entrypoints.worker import serve

    serve(settings)


ROLE_RUNNERS: dict[str, Callable[[Settings], None]] = {"http": http_role, "grpc": grpc_role, "worker": worker_role}
