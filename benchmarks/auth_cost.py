"""What AUTH_MODE=jwt costs: REST GET and POST (wrk) and gRPC GetOrder (h2load), with and without
authentication, interleaved in one sitting. Prints throughput and server CPU per request of each
run, and the jwt/none ratios (the box is shared: compare ratios, not absolute figures).

    python -m benchmarks.auth_cost                 # 3 rounds of 10 s per case, ~4 minutes
    python -m benchmarks.auth_cost --rounds 1 --seconds 5

Every request of a run sends the same token (the steady state of a client with one token), so
what jwt mode adds is the header parsing, a cache lookup and the scope and owner checks; the
first request of each token pays one ES256 verification.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx

from benchmarks import h2load as h2load_tool
from benchmarks.database import admin_sql
from benchmarks.processes import ServiceProcess, cpu_seconds, descendants
from service.config import DEFAULT_REDIS_URL, LOCAL_POSTGRES_ADMIN_URL, with_database
from tests.auth_tokens import AUDIENCE, ISSUER, SigningKey, write_jwks

DATABASE = "orders_auth_bench"

_WRK_LUA = """
local token = "{token}"
local path = "{path}"
local method = "{method}"
request = function()
  local headers = {{ ["Content-Type"] = "application/json" }}
  if token ~= "" then headers["Authorization"] = "Bearer " .. token end
  if method == "POST" then
    return wrk.format("POST", "/orders", headers, '{{"product":"bench","quantity":1}}')
  end
  return wrk.format("GET", path, headers)
end
done = function(summary, latency, requests)
  io.write(string.format('WRK_JSON {{"requests": %d, "duration_us": %d, "status": %d}}\\n',
    summary.requests, summary.duration, summary.errors.status))
end
"""


def wrk(service: ServiceProcess, method: str, path: str, token: str, seconds: int) -> tuple[int, float, int]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(_WRK_LUA.format(token=token, path=path, method=method))
    try:
        command = ["wrk", "-t", "1", "-c", "32", "-d", f"{seconds}s", "-s", handle.name, service.base_url + "/"]
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    finally:
        os.unlink(handle.name)
    figures = json.loads(next(x for x in out.splitlines() if x.startswith("WRK_JSON ")).removeprefix("WRK_JSON "))
    return figures["requests"], figures["duration_us"] / 1e6, figures["status"]


def h2load(service: ServiceProcess, order_id: str, token: str, seconds: int) -> tuple[int, float, int]:
    from service.grpc.pb import orders_pb2

    message = orders_pb2.GetOrderRequest(id=order_id).SerializeToString()
    headers = (f"authorization: Bearer {token}",) if token else ()
    figures = h2load_tool.run(service.grpc_target, "orders.OrderService/GetOrder", message, seconds, headers)
    # grpc-status is in trailers, which h2load does not check: 200 with UNAUTHENTICATED counts as
    # success, so each case is checked with a real call before it is measured (see `check_grpc`).
    return figures["succeeded"], figures["seconds"], figures["errors"]


def check_grpc(service: ServiceProcess, order_id: str, token: str) -> None:
    import grpc

    from service.grpc.pb import orders_pb2, orders_pb2_grpc

    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = orders_pb2_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        stub.GetOrder(orders_pb2.GetOrderRequest(id=order_id), metadata=metadata, timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL", LOCAL_POSTGRES_ADMIN_URL))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    if not (shutil.which("wrk") and shutil.which("h2load")):
        print("needs wrk and h2load (apt-get install wrk nghttp2-client)")
        return 2
    database_url = with_database(args.admin_url, DATABASE)
    asyncio.run(
        admin_sql(args.admin_url, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)", f"CREATE DATABASE {DATABASE}")
    )
    key = SigningKey("bench", "ES256")
    folder = Path(tempfile.mkdtemp(prefix="auth-cost-"))
    jwks_file = write_jwks(folder / "jwks.json", key)
    token = key.token("bench-user", "orders:read orders:write", expires_in=3600)
    modes = {
        "none": ({}, ""),
        "jwt": (
            {"AUTH_MODE": "jwt", "AUTH_ISSUER": ISSUER, "AUTH_AUDIENCE": AUDIENCE, "AUTH_JWKS_FILE": str(jwks_file)},
            token,
        ),
    }
    services: dict[str, ServiceProcess] = {}
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    try:
        for mode, (env, _) in modes.items():
            service = ServiceProcess(
                database_url, args.redis_url, "http,grpc", {"LOG_LEVEL": "WARNING", **env}, name=f"auth-{mode}"
            )
            service.start(wait_for_grpc=True, timeout=60)
            services[mode] = service
        order_ids: dict[str, str] = {}
        for mode, (_, mode_token) in modes.items():
            headers = {"Authorization": f"Bearer {mode_token}"} if mode_token else {}
            created = httpx.post(
                f"{services[mode].base_url}/orders", json={"product": "b", "quantity": 1}, headers=headers
            )
            created.raise_for_status()
            order_ids[mode] = created.json()["id"]
            check_grpc(services[mode], order_ids[mode], mode_token)
        cases = ["REST GET /orders/{id}", "REST POST /orders", "gRPC GetOrder"]
        for round_number in range(args.rounds):
            # none first in even rounds, jwt first in odd ones: drift on a shared box cancels out
            order = list(modes.items()) if round_number % 2 == 0 else list(reversed(modes.items()))
            for case in cases:
                for mode, (_, mode_token) in order:
                    service = services[mode]
                    before = cpu_seconds(descendants(service.pid))
                    if case.startswith("REST GET"):
                        ok, wall, failed = wrk(service, "GET", f"/orders/{order_ids[mode]}", mode_token, args.seconds)
                    elif case.startswith("REST POST"):
                        ok, wall, failed = wrk(service, "POST", "/orders", mode_token, args.seconds)
                    else:
                        ok, wall, failed = h2load(service, order_ids[mode], mode_token, args.seconds)
                    cpu = cpu_seconds(descendants(service.pid)) - before
                    if failed:
                        raise RuntimeError(f"{case} {mode}: {failed} failed requests")
                    results.setdefault(case, {}).setdefault(mode, []).append((ok / wall, cpu / max(ok, 1) * 1e6))
    finally:
        for service in services.values():
            service.stop()
        asyncio.run(admin_sql(args.admin_url, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
    print("| case | none req/s | jwt req/s | jwt/none | none CPU us/req | jwt CPU us/req | jwt/none |")
    print("|---|---|---|---|---|---|---|")
    report: dict[str, Any] = {}
    for case, by_mode in results.items():
        rate = {m: statistics.median(r for r, _ in runs) for m, runs in by_mode.items()}
        cpu = {m: statistics.median(c for _, c in runs) for m, runs in by_mode.items()}
        report[case] = {"rps": rate, "cpu_us_per_request": cpu, "rounds": by_mode}
        print(
            f"| {case} | {rate['none']:.0f} | {rate['jwt']:.0f} | {rate['jwt'] / rate['none']:.2f} "
            f"| {cpu['none']:.0f} | {cpu['jwt']:.0f} | {cpu['jwt'] / cpu['none']:.2f} |"
        )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    from service.process_exit import run_then_exit

    run_then_exit(main)
