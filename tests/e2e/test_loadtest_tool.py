"""The load-test tool drives every REST scenario against a real service and reports honestly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.load import Plan, format_report, run
from benchmarks.wrk_driver import lua_script, wrk_binary
from tests.e2e.conftest import ServiceProcess


@pytest.mark.parametrize("scenario", ["create", "get", "list", "update", "delete", "mixed", "health"])
def test_each_scenario_runs_without_errors(module_service: ServiceProcess, scenario: str) -> None:
    plan = Plan(scenario, "rest", module_service.base_url, "", 4, 60, None, [], False)
    report = run(plan, processes=1)
    assert report["requests_ok"] == 60 and report["error_count"] == 0
    latency = report["latency_ms"]
    assert isinstance(latency, dict)
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert "throughput" in format_report(report)


def test_errors_are_counted_by_kind(module_service: ServiceProcess) -> None:
    plan = Plan("get", "rest", module_service.base_url, "", 2, 20, None, [], False)
    plan_report = run(plan, processes=1)
    assert plan_report["error_count"] == 0
    broken = Plan("health", "rest", "http://127.0.0.1:1", "", 1, 3, None, [], False)
    report = run(broken, processes=1)
    assert report["requests_ok"] == 0 and report["error_count"] == 3
    assert any(kind.startswith("connection") for kind in report["errors"])  # type: ignore[union-attr]


def test_cli_writes_json_with_several_processes(module_service: ServiceProcess, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--url",
            module_service.base_url,
            "--scenario",
            "health",
            "--requests",
            "200",
            "--concurrency",
            "4",
            "--processes",
            "2",
            "--json",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(out.read_text())
    assert report["requests_ok"] == 200 and report["processes"] == 2
    assert "throughput" in result.stdout


def test_idempotency_keys_make_every_create_new(module_service: ServiceProcess) -> None:
    plan = Plan("create", "rest", module_service.base_url, "", 4, 40, None, [], False, idempotency_keys=True)
    report = run(plan, processes=1)
    assert report["requests_ok"] == 40 and report["error_count"] == 0


def test_wrk_script_picks_scenarios_like_the_python_driver() -> None:
    script = lua_script("mixed", ["a", "b"], keyed=True)
    assert 'local ids = {"a","b"}' in script and 'local scenario = "mixed"' in script
    assert '{"create", 40}, {"get", 30}, {"list", 20}, {"update", 10}' in script
    assert "Idempotency-Key" in script and "local key_header = true" in script


@pytest.mark.skipif(wrk_binary() is None, reason="wrk is not installed")
@pytest.mark.parametrize("scenario", ["get", "create", "mixed"])
def test_wrk_driver_reports_in_the_same_shape(module_service: ServiceProcess, scenario: str) -> None:
    plan = Plan(scenario, "rest", module_service.base_url, "", 4, None, 1.0, [], False, driver="wrk")
    report = run(plan, processes=1)
    assert report["driver"] == "wrk" and report["error_count"] == 0 and report["requests_ok"] > 0  # type: ignore[operator]
    latency = report["latency_ms"]
    assert isinstance(latency, dict) and 0 < latency["p50"] <= latency["p99"] <= latency["max"]


def test_wrk_driver_refuses_what_it_cannot_drive() -> None:
    plan = Plan("delete", "rest", "http://127.0.0.1:1", "", 1, None, 1.0, [], False, driver="wrk")
    with pytest.raises(SystemExit):
        run(plan, processes=1)
