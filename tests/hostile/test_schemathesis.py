"""schemathesis against the running service's own /openapi.json: every route, every check.

Runs the `st` command line (all four phases: examples, coverage, fuzzing, stateful) with
`--checks all` (server errors, status codes, content types, response headers and schemas,
positive and negative data, unsupported methods, Allow headers, use after free, resource
availability, ...). FUZZ_EXAMPLES bounds the examples per operation (30 here; `make fuzz` runs
500) and FUZZ_SEED fixes the seed (fixed here so that the suite is deterministic; `make fuzz`
draws a new one each run). The two accepted statuses beyond schemathesis's defaults and the two
token formats are explained in schemathesis.toml and schemathesis_hooks.py next to this file.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.conftest import ServiceProcess
from tests.hostile.conftest import CURSOR_SECRET

pytestmark = [pytest.mark.e2e, pytest.mark.hostile]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_EXAMPLES = 30
DEFAULT_SEED = "20261203"


def run_schemathesis(service: ServiceProcess, report: Path) -> tuple[int, str]:
    examples = os.environ.get("FUZZ_EXAMPLES", str(DEFAULT_EXAMPLES))
    seed = os.environ.get("FUZZ_SEED", DEFAULT_SEED)
    command = [
        str(Path(sys.executable).parent / "st"),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"{service.base_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        examples,
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        "--request-timeout",
        "10",
        # An event stream never ends on its own: not something a request/response fuzzer can judge
        # (tests/e2e/test_watch.py covers its input errors).
        "--exclude-operation-id",
        "watchOrderChanges",
    ]
    if seed:
        command += ["--seed", seed]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.hostile.schemathesis_hooks",
        "CURSOR_SECRET": CURSOR_SECRET,
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
    }
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    return done.returncode, done.stdout + done.stderr


def figures(report: Path) -> dict[str, int]:
    """Test cases, recorded requests and failed checks of a run, from its NDJSON events."""
    cases = requests = failures = 0
    for line in report.read_text().splitlines():
        event = json.loads(line)
        scenario = event.get("ScenarioFinished")
        if not scenario:
            continue
        recorder = scenario.get("recorder", {})
        cases += len(recorder.get("cases", {}))
        requests += len(recorder.get("interactions", {}))
        for results in recorder.get("checks", {}).values():
            failures += sum(1 for result in results if result.get("status") == "failure")
    return {"cases": cases, "requests": requests, "check_failures": failures}


def served(log: str) -> Counter[int]:
    """Statuses of the HTTP requests in the service's access log (one line per request handled)."""
    statuses: Counter[int] = Counter()
    for line in log.splitlines():
        if '"orders.access"' not in line:
            continue
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("role") == "http":
                statuses[int(entry["status"])] += 1
    return statuses


def test_openapi_document_holds_under_schemathesis(hostile_service: ServiceProcess, tmp_path: Path) -> None:
    report = tmp_path / "schemathesis.ndjson"
    log_start = len(hostile_service.logs())
    code, output = run_schemathesis(hostile_service, report)
    log = hostile_service.logs()[log_start:]
    statuses = served(log)
    summary = [line for line in output.splitlines() if "generated" in line or (" in " in line and "===" in line)]
    print(
        "schemathesis:",
        *summary,
        figures(report) if report.exists() else {},
        f"requests served: {sum(statuses.values())} {dict(sorted(statuses.items()))}",
        sep="\n  ",
    )
    assert code == 0, output  # warnings (e.g. "mostly rejected": stale If-Match versions, 412) do not fail
    assert not [status for status in statuses if status >= 500], statuses
    assert "unhandled error" not in log
