"""The instruction-count gate: reading callgrind dumps, the verdict against a baseline, one real run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.instructions import __main__ as cli
from benchmarks.instructions import callgrind, verdict
from benchmarks.instructions.verdict import Status

ENCODE = "benchmarks/test_bench_hot_paths.py::test_encode_order"
PARSE = "benchmarks/test_bench_native.py::test_parse_uuid[pure]"


def _dump(trigger: str, events: str, totals: str, *, summary: bool = False) -> str:
    """A callgrind output file as valgrind 3.19 writes one with --dump-line=no."""
    return "\n".join(
        [
            "# callgrind format",
            "version: 1",
            "creator: callgrind-3.19.0",
            "pid: 4242",
            "cmd:  /venv/bin/python -m pytest benchmarks --codspeed",
            "part: 1",
            "",
            "desc: I1 cache: ",
            f"desc: Trigger: {trigger}",
            "",
            "positions: line",
            f"events: {events}",
            *([f"summary: {totals}"] if summary else []),
            "",
            "ob=(1) /usr/lib/libpython3.11.so",
            "fl=(1) ???",
            "fn=(1) _PyEval_EvalFrameDefault",
            "0 1000 10 5",
            "",
            *([] if summary else [f"totals: {totals}"]),
            "",
        ]
    )


def test_a_dump_gives_its_benchmark_and_its_instructions() -> None:
    dump = callgrind.parse_dump(_dump(f"Client Request: {ENCODE}", "Ir", "123456"))
    assert dump == callgrind.Dump(ENCODE, 123456)


def test_ir_is_read_from_its_column_and_from_summary_without_totals() -> None:
    dump = callgrind.parse_dump(_dump(f"Client Request: {PARSE}", "Dr Ir Dw", "7 900 3", summary=True))
    assert dump.instructions == 900


def test_a_file_without_ir_is_an_error() -> None:
    with pytest.raises(callgrind.MeasureError):
        callgrind.parse_dump("# callgrind format\nevents: Dr\ntotals: 5\n")


def test_dumps_are_collected_per_benchmark_and_the_final_dump_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "callgrind.out.1").write_text(_dump(f"Client Request: {ENCODE}", "Ir", "5000"))
    (tmp_path / "callgrind.out.2").write_text(_dump(f"Client Request: {PARSE}", "Ir", "7000"))
    (tmp_path / "callgrind.out.3").write_text(_dump("Program termination", "Ir", "12"))
    assert callgrind.collect(sorted(tmp_path.iterdir())) == {ENCODE: 5000, PARSE: 7000}
    (tmp_path / "callgrind.out.4").write_text(_dump(f"Client Request: {PARSE}", "Ir", "7001"))
    with pytest.raises(callgrind.MeasureError, match="twice"):
        callgrind.collect(sorted(tmp_path.iterdir()))


def test_the_command_starts_with_instrumentation_off_and_the_environment_is_fixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = callgrind.command([ENCODE], tmp_path / "out", python="python3")
    assert argv[:3] == ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    assert argv[argv.index("--codspeed-mode") + 1] == "simulation"
    assert "benchmarks.instructions.warmup" in argv
    monkeypatch.setenv("ORDERS_NATIVE", "0")
    env = callgrind.environment(tmp_path)
    assert env["PYTHONHASHSEED"] == "0"
    assert "CODSPEED_ENV" in env
    assert env["CODSPEED_PROFILE_FOLDER"] == str(tmp_path)
    assert "ORDERS_NATIVE" not in env  # nothing of the caller's environment reaches the counts


@pytest.mark.parametrize(
    ("now", "status"),
    [
        (1000, Status.OK),
        (1050, Status.OK),  # exactly at the threshold still passes
        (1051, Status.REGRESSED),
        (950, Status.OK),
        (949, Status.FASTER),
        (None, Status.MISSING),
    ],
)
def test_each_count_against_its_baseline(now: int | None, status: Status) -> None:
    assert verdict.classify(1000, now, 0.05) is status


def test_a_regression_or_a_missing_benchmark_fails_and_a_new_one_does_not() -> None:
    baseline = {ENCODE: 1000, PARSE: 2000}
    assert not verdict.failed(verdict.compare(baseline, {ENCODE: 1010, PARSE: 1000, "new": 5}, 0.05))
    assert verdict.failed(verdict.compare(baseline, {ENCODE: 1100, PARSE: 2000}, 0.05))
    rows = verdict.compare(baseline, {ENCODE: 1000}, 0.05)
    assert [row.status for row in rows] == [Status.OK, Status.MISSING]
    table = verdict.render(rows, 0.05)
    assert "MISSING" in table
    assert "1 failed" in table


def test_the_table_shows_counts_and_the_change() -> None:
    table = verdict.render(verdict.compare({ENCODE: 1000}, {ENCODE: 1200}, 0.05), 0.05)
    assert "1,000" in table
    assert "1,200" in table
    assert "+20.00%" in table
    assert "REGRESSED" in table


def test_spread_is_max_minus_min_over_min() -> None:
    table = verdict.spread([{ENCODE: 1000}, {ENCODE: 1002}, {ENCODE: 1001}])
    assert "0.200%" in table


def test_the_gate_exits_non_zero_on_a_regression(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"environment": cli.environment(), "instructions": {ENCODE: 1000}}))
    monkeypatch.setattr(callgrind, "measure", lambda targets: {ENCODE: 1040})
    assert cli.main(["--baseline", str(baseline)]) == 0
    monkeypatch.setattr(callgrind, "measure", lambda targets: {ENCODE: 1300})
    assert cli.main(["gate", "--baseline", str(baseline)]) == 1
    assert cli.main(["gate", "--baseline", str(baseline), "--threshold", "0.5"]) == 0
    assert cli.main(["rebaseline", "--baseline", str(baseline)]) == 0
    assert json.loads(baseline.read_text())["instructions"] == {ENCODE: 1300}


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_a_real_benchmark_under_callgrind() -> None:
    """One small benchmark for real (~10 s): pytest-codspeed's hooks reach callgrind."""
    target = "benchmarks/test_bench_native.py::test_parse_uuid_stdlib"
    counts = callgrind.measure([target])
    assert list(counts) == [target]
    assert 1_000 < counts[target] < 1_000_000  # one uuid.UUID(str) call, not the interpreter's start-up
