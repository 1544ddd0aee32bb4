"""The load-test tool drives every REST scenario against a real service and reports honestly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.load import Plan, format_report, run
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
