"""The command line of the instruction-count gate (see benchmarks/instructions/__init__.py)."""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.instructions import callgrind, verdict

BASELINE = Path(__file__).resolve().parent / "baseline.json"
# Every micro-benchmark is a pure CPU hot path (in-memory fakes, no socket, no database).
TARGETS = (
    "benchmarks/test_bench_hot_paths.py",
    "benchmarks/test_bench_native.py",
    "benchmarks/test_bench_auth.py",
)
# A benchmark fails the gate when it executes this much more than its baseline. Measured
# (benchmarks/RESULTS.md, "Instruction-count gate"): repeated runs agree to 0.03%, whatever the
# load; a different heap layout (environment, order of the benchmarks) moves a count by up to 4.7%.
# 10% is twice that, and CodSpeed's own default regression threshold.
THRESHOLD = 0.10
# The counts depend on these as much as on our code: a change of one explains a changed count.
PACKAGES = ("msgspec", "protobuf", "cryptography", "PyJWT", "uuid-utils", "pytest-codspeed")


def environment() -> dict[str, str]:
    valgrind = "absent"
    if shutil.which("valgrind"):
        valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    env = {"python": platform.python_version(), "valgrind": valgrind, "machine": platform.machine()}
    for package in PACKAGES:
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            env[package] = "absent"
    return env


def load(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise SystemExit(f"no baseline at {path}: run `make bench-rebaseline`")
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def measure(targets: list[str]) -> dict[str, int]:
    started = time.monotonic()
    try:
        counts = callgrind.measure(targets)
    except callgrind.MeasureError as exc:
        raise SystemExit(f"instruction count failed: {exc}") from exc
    print(f"measured {len(counts)} benchmarks under callgrind in {time.monotonic() - started:.0f} s")
    return counts


def gate(args: argparse.Namespace) -> int:
    document = load(args.baseline)
    rows = verdict.compare(document["instructions"], measure(args.targets), args.threshold)
    print(verdict.render(rows, args.threshold))
    then = document.get("environment", {})
    for key, now in sorted(environment().items()):
        if then.get(key) != now:
            print(f"note: {key} was {then.get(key)} at the baseline, is {now} now (counts depend on it)")
    if verdict.failed(rows):
        print("re-baseline with `make bench-rebaseline` only when the extra instructions are intended")
        return 1
    return 0


def rebaseline(args: argparse.Namespace) -> int:
    counts = measure(args.targets)
    document = {
        "about": f"instructions (callgrind Ir) per call of each benchmark, mean of {callgrind.MEASURED_CALLS} calls "
        f"after {callgrind.WARMUP_CALLS} unmeasured ones; `make bench-rebaseline` rewrites it",
        "environment": environment(),
        "instructions": dict(sorted(counts.items())),
    }
    args.baseline.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {len(counts)} counts to {args.baseline}")
    return 0


def spread(args: argparse.Namespace) -> int:
    runs = [measure(args.targets) for _ in range(args.runs)]
    print(verdict.spread(runs))
    return 0


COMMANDS = {"gate": gate, "rebaseline": rebaseline, "spread": spread}


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__)
    main.add_argument("command", nargs="?", choices=COMMANDS, default="gate")
    main.add_argument("targets", nargs="*", default=list(TARGETS), help="pytest targets (default: every benchmark)")
    main.add_argument("--baseline", type=Path, default=BASELINE)
    main.add_argument("--threshold", type=float, default=THRESHOLD, help="allowed growth (0.10: 10%%)")
    main.add_argument("--runs", type=int, default=3, help="measurements for `spread`")
    return main


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
