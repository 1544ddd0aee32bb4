"""The wheel the Dockerfile builds, installed into a fresh virtualenv, serves outside the checkout.

Builds the project wheel with the Dockerfile builder's own `pip wheel` command (read from the
Dockerfile, so the two cannot drift), installs it into a new `python -m venv`, migrates an
empty schema with the installed `orders-service migrate` (the SQL files must be in the wheel),
runs `orders-service serve --roles http` from a directory outside the repository, and checks
/health, one POST /orders -> 201 and a clean SIGTERM (exit 0).

Dependency wheels are kept in /tmp/orders-wheelhouse-<hash of the dependency list> between
runs; the project wheel is always built afresh. pip may fetch from the package index.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.database import admin_sql
from tests import conftest

# The one module of the wheel that needs an optional extra: the OpenTelemetry adapter, imported
# only when tracing is configured (the `tracing` extra). Every other module imports with the
# wheel's own dependencies (the robyn and ASGI bindings live in benchmarks/, not in the wheel).
OPTIONAL_EXTRA_MODULES = {"service.observability.otel": "opentelemetry"}

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PIP_TIMEOUT = 600  # only a cold wheel-house downloads; warm runs take seconds


def builder_wheel_args() -> list[str]:
    """The arguments of the Dockerfile builder's `pip wheel ... --no-deps ... .` command."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    match = re.search(r"\S*pip wheel ([^&\n]*--no-deps[^&\n]*)", text)
    if match:
        return shlex.split(match.group(1))
    raise AssertionError("the Dockerfile has no `pip wheel --no-deps` command")


def run(argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def wheelhouse() -> Path:
    """Dependency wheels, built once per dependency list (the Dockerfile's first pip layer)."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    key = hashlib.sha256(json.dumps([sys.version_info[:2], sorted(dependencies)]).encode()).hexdigest()[:16]
    house = Path(f"/tmp/orders-wheelhouse-{key}")
    done = house / ".complete"
    if not done.exists():
        house.mkdir(parents=True, exist_ok=True)
        requirements = house / "requirements.txt"
        requirements.write_text("\n".join(dependencies) + "\n")
        run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(house), "-r", str(requirements)], PIP_TIMEOUT)
        done.touch()
    return house


def get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
async def empty_schema(test_services: conftest.TestServices) -> AsyncIterator[conftest.IsolatedSchema]:
    """Like the `schema` fixture, isolated and dropped afterwards, but left unmigrated."""
    isolated = conftest.IsolatedSchema(test_services.database_url)
    await admin_sql(isolated.base_dsn, f"CREATE SCHEMA {isolated.name}")
    try:
        yield isolated
    finally:
        await isolated.drop()


async def test_wheel_installs_and_serves_outside_the_checkout(
    tmp_path: Path, empty_schema: conftest.IsolatedSchema, test_services: conftest.TestServices
) -> None:
    dist = tmp_path / "dist"
    args = [str(dist) if a == "/wheels" else str(ROOT) if a == "." else a for a in builder_wheel_args()]
    run([sys.executable, "-m", "pip", "wheel", "-q", *args], PIP_TIMEOUT, cwd=ROOT)
    wheels = list(dist.glob("orders_service-*.whl"))
    assert len(wheels) == 1, wheels
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert any(n.startswith("native/_speedups") and n.endswith(".so") for n in names), "Cython extension built"

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], 120)
    python, cli = venv / "bin" / "python", venv / "bin" / "orders-service"
    run(
        [str(python), "-m", "pip", "install", "-q", "--find-links", str(wheelhouse()), str(wheels[0])],
        PIP_TIMEOUT,
    )

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "ORDERS_EMBEDDED")}
    port = conftest.free_port()
    env.update(
        DATABASE_URL=empty_schema.dsn,
        REDIS_URL=test_services.redis_url,
        PORT=str(port),
        PPROF_PORT="0",  # no admin port: nothing else to collide with
        HTTP_WORKERS="1",
        MIGRATE_ON_START="false",
        SHUTDOWN_TIMEOUT="10",
        DATA_DIR=str(outside / ".data"),
    )
    where = run([str(python), "-c", "import service, native; print(service.__file__, native.ACTIVE)"], 60, cwd=outside)
    assert str(venv) in where.stdout, f"imported from the checkout, not the wheel: {where.stdout}"

    # Every module of the installed packages imports (a package left out of the wheel fails here),
    # with the wheel's own dependencies: only OPTIONAL_EXTRA_MODULES may miss their extra.
    import_all = (
        "import importlib, pkgutil, service, native\n"
        f"optional = {OPTIONAL_EXTRA_MODULES!r}\n"
        "for package in (service, native):\n"
        "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        if module.name.endswith('__main__'):\n"
        "            continue\n"
        "        try:\n"
        "            importlib.import_module(module.name)\n"
        "        except ModuleNotFoundError as missing:\n"
        "            if (missing.name or '').split('.')[0] != optional.get(module.name):\n"
        "                raise\n"
        "            print('optional', module.name)\n"
    )
    imported = run([str(python), "-c", import_all], 60, cwd=outside)
    tolerated = {line.split()[1] for line in imported.stdout.splitlines() if line.startswith("optional ")}
    assert tolerated == set(OPTIONAL_EXTRA_MODULES), imported.stdout
    assert "service/entrypoints/http.py" in names, "the entry points ship in the wheel"
    assert not [n for n in names if "asgi" in n or "robyn" in n], "benchmark-only bindings stay out of the wheel"

    migrated = run([str(cli), "migrate"], 60, cwd=outside, env=env)
    assert "0001_orders.sql" in migrated.stdout + migrated.stderr, "the migrations ship in the wheel"

    log = (outside / "serve.log").open("w+")
    process = subprocess.Popen(
        [str(cli), "serve", "--roles", "http"], cwd=outside, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status, _ = get(f"http://127.0.0.1:{port}/health", timeout=1)
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200, f"/health never answered 200; log:\n{(outside / 'serve.log').read_text()[-3000:]}"

        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/orders",
            data=json.dumps({"product": "book", "quantity": 2}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 201
            assert response.headers["Location"].startswith("/orders/")
            assert json.loads(response.read())["product"] == "book"

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, (outside / "serve.log").read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()
