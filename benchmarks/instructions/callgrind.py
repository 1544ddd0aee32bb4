"""Run CodSpeed micro-benchmarks under callgrind and read back the instructions of each one.

pytest-codspeed's own simulation (instrumentation) mode does the measuring: with CODSPEED_ENV set
and under valgrind, it runs each benchmark body between CALLGRIND_START_INSTRUMENTATION and
CALLGRIND_STOP_INSTRUMENTATION (gc collected then off, random seeded; warmup.py makes that body
warmed-up repeated calls) and dumps the counts with CALLGRIND_DUMP_STATS_AT(<benchmark uri>).
valgrind starts with instrumentation off, so interpreter start-up, imports, collection and
fixtures cost nothing; each dump file holds one benchmark.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRIGGER = "desc: Trigger: Client Request: "
METADATA = "Metadata: "  # pytest-codspeed dumps its name and version once, at 0 instructions
# pytest plugins the benchmarks need; autoloading the rest (schemathesis, hypothesis, cov, ...)
# only slows start-up under valgrind.
PLUGINS = ("pytest_codspeed.plugin", "pytest_timeout", "pytest_asyncio.plugin", "benchmarks.instructions.warmup")
# Each body is called WARMUP_CALLS times unmeasured, then MEASURED_CALLS times measured; the count is
# the mean per measured call. Both shrink how much a benchmark's count depends on what ran before
# it (warmup.py; benchmarks/RESULTS.md, "Instruction-count gate").
WARMUP_CALLS = 10
MEASURED_CALLS = 10


class MeasureError(RuntimeError):
    """valgrind or pytest failed, or the dumps do not hold one count per benchmark."""


@dataclass(frozen=True)
class Dump:
    """One callgrind dump: what triggered it and its total instructions (Ir)."""

    trigger: str
    instructions: int


def parse_dump(text: str) -> Dump:
    """The trigger and total Ir of one callgrind output file (format of callgrind_annotate)."""
    trigger = ""
    events: list[str] = []
    totals: list[str] | None = None
    summary: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("desc: Trigger: "):
            trigger = line.removeprefix(TRIGGER) if line.startswith(TRIGGER) else ""
        elif line.startswith("events:"):
            events = line.split(":", 1)[1].split()
        elif line.startswith("totals:"):
            totals = line.split(":", 1)[1].split()
        elif line.startswith("summary:"):
            summary = line.split(":", 1)[1].split()
    values = totals if totals is not None else summary
    if "Ir" not in events or values is None:
        raise MeasureError("not a callgrind dump with Ir totals")
    index = events.index("Ir")
    return Dump(trigger, int(values[index]) if index < len(values) else 0)


def collect(paths: Iterable[Path]) -> dict[str, int]:
    """Instructions per benchmark uri from dump files; dumps not made by a benchmark are skipped."""
    counts: dict[str, int] = {}
    for path in paths:
        dump = parse_dump(path.read_text(errors="replace"))
        if not dump.trigger or dump.trigger.startswith(METADATA):
            continue  # pytest-codspeed's version marker, or the dump at exit: nothing instrumented
        if dump.trigger in counts:
            raise MeasureError(f"{dump.trigger} was dumped twice")
        counts[dump.trigger] = dump.instructions
    return counts


def command(targets: Sequence[str], out_file: Path, python: str = sys.executable) -> list[str]:
    plugins = [arg for name in PLUGINS for arg in ("-p", name)]
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--dump-line=no",
        "--compress-strings=no",
        f"--callgrind-out-file={out_file}",
        python,
        "-m",
        "pytest",
        *targets,
        "--codspeed",
        "--codspeed-mode",
        "simulation",
        *plugins,
        "-p",
        "no:cacheprovider",
        "-q",
    ]


def environment(profile_folder: Path, warmup: int = WARMUP_CALLS, calls: int = MEASURED_CALLS) -> dict[str, str]:
    """The whole environment of the measured process, the same wherever the gate is started from.

    Counts move with the heap's layout (CPython's method cache is indexed by the addresses of
    names): inheriting the caller's variables made a make-started run count up to 4% more in some
    benchmarks than a shell-started one. So nothing is inherited (ORDERS_NATIVE neither: the gate
    measures what a default install runs).
    """
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",  # the same str hashes, so the same dict and set layouts, every run
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "CODSPEED_ENV": "callgrind",  # any value: pytest-codspeed then uses its instrument hooks
        "CODSPEED_PROFILE_FOLDER": str(profile_folder),  # its results file, away from .codspeed/
        "BENCH_GATE_WARMUP": str(warmup),
        "BENCH_GATE_CALLS": str(calls),
    }


def measure(targets: Sequence[str], warmup: int = WARMUP_CALLS, calls: int = MEASURED_CALLS) -> dict[str, int]:
    """One callgrind process over the given pytest targets: instructions per call of each benchmark."""
    with tempfile.TemporaryDirectory(prefix="callgrind-") as tmp:
        folder = Path(tmp)
        out_file = folder / "callgrind.out"
        run = subprocess.run(
            command(targets, out_file),
            cwd=ROOT,
            env=environment(folder / "codspeed", warmup, calls),
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            raise MeasureError(f"valgrind/pytest exited {run.returncode}\n{run.stdout[-4000:]}{run.stderr[-4000:]}")
        totals = collect(sorted(folder.glob("callgrind.out*")))
    if not totals:
        raise MeasureError(f"no benchmark was measured\n{run.stdout[-4000:]}{run.stderr[-4000:]}")
    return {uri: round(total / calls) for uri, total in totals.items()}
