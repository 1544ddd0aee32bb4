"""Keep a local baseline of the CodSpeed walltime results and compare a new run against it.

python -m benchmarks.compare save      # latest .codspeed/results_*.json -> benchmarks/baseline.json
python -m benchmarks.compare compare   # latest results vs the baseline, per benchmark
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "benchmarks" / "baseline.json"
REGRESSION = 1.25  # flag a benchmark whose median got this much slower


def latest_results() -> dict[str, float]:
    runs = sorted((ROOT / ".codspeed").glob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise SystemExit("no results: run `make bench` (pytest benchmarks/ --codspeed) first")
    data = json.loads(runs[-1].read_text())
    return {b["uri"]: float(b["stats"]["median_ns"]) for b in data["benchmarks"]}


def save() -> int:
    BASELINE.write_text(json.dumps(latest_results(), indent=1, sort_keys=True) + "\n")
    print(f"baseline saved to {BASELINE.relative_to(ROOT)}")
    return 0


def compare() -> int:
    if not BASELINE.exists():
        raise SystemExit("no baseline: run `make bench-save` first")
    baseline: dict[str, float] = json.loads(BASELINE.read_text())
    current = latest_results()
    slower = 0
    print(f"{'benchmark':<70} {'baseline':>12} {'now':>12} {'ratio':>7}")
    for uri in sorted(current.keys() | baseline.keys()):
        before, now = baseline.get(uri), current.get(uri)
        if before is None or now is None:
            print(
                f"{uri:<70} {'-' if before is None else f'{before:,.0f} ns':>12} "
                f"{'-' if now is None else f'{now:,.0f} ns':>12}"
            )
            continue
        ratio = now / before
        flag = "  SLOWER" if ratio > REGRESSION else ""
        slower += ratio > REGRESSION
        print(f"{uri:<70} {before:>9,.0f} ns {now:>9,.0f} ns {ratio:>6.2f}x{flag}")
    return 1 if slower else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["save"]:
        return save()
    if argv[:1] == ["compare"]:
        return compare()
    print(__doc__)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
