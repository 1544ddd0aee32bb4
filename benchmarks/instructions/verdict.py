"""Instruction counts against the committed baseline: one row per benchmark, and the verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    REGRESSED = "REGRESSED"
    FASTER = "fewer: re-baseline"
    NEW = "new: re-baseline"
    MISSING = "MISSING"


@dataclass(frozen=True)
class Row:
    uri: str
    baseline: int | None
    current: int | None
    status: Status

    @property
    def change(self) -> float | None:
        if not self.baseline or self.current is None:
            return None
        return self.current / self.baseline - 1


def classify(baseline: int | None, current: int | None, threshold: float) -> Status:
    if current is None:
        return Status.MISSING  # in the baseline but not measured: renamed, failed or deselected
    if baseline is None:
        return Status.NEW
    if current > baseline * (1 + threshold):
        return Status.REGRESSED
    if current < baseline * (1 - threshold):
        return Status.FASTER  # passes, but until re-baselined a regression could hide in the gain
    return Status.OK


def compare(baseline: Mapping[str, int], current: Mapping[str, int], threshold: float) -> list[Row]:
    return [
        Row(uri, baseline.get(uri), current.get(uri), classify(baseline.get(uri), current.get(uri), threshold))
        for uri in sorted(baseline.keys() | current.keys())
    ]


def failed(rows: list[Row]) -> bool:
    return any(row.status in (Status.REGRESSED, Status.MISSING) for row in rows)


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def render(rows: list[Row], threshold: float) -> str:
    width = max([len(row.uri) for row in rows] + [9])
    lines = [f"{'benchmark':<{width}} {'baseline Ir':>13} {'now Ir':>13} {'change':>8}  status"]
    for row in rows:
        change = "" if row.change is None else f"{row.change:+.2%}"
        lines.append(
            f"{row.uri:<{width}} {_count(row.baseline):>13} {_count(row.current):>13} {change:>8}  {row.status.value}"
        )
    bad = [row for row in rows if row.status in (Status.REGRESSED, Status.MISSING)]
    lines.append(
        f"{len(rows)} benchmarks, threshold +{threshold:.0%} instructions: "
        + (f"{len(bad)} failed" if bad else "no regression")
    )
    return "\n".join(lines)


def spread(runs: Sequence[Mapping[str, int]]) -> str:
    """Per benchmark: min, max and (max - min) / min over repeated measurements."""
    uris = sorted(set().union(*runs))
    width = max([len(uri) for uri in uris] + [9])
    lines = [f"{'benchmark':<{width}} {'min Ir':>13} {'max Ir':>13} {'spread':>8}  runs"]
    for uri in uris:
        counts = [run[uri] for run in runs if uri in run]
        low, high = min(counts), max(counts)
        lines.append(f"{uri:<{width}} {low:>13,} {high:>13,} {(high - low) / low:>8.3%}  {len(counts)}")
    return "\n".join(lines)
