"""A latency histogram that many processes fill cheaply and one merges: fixed 0.1 ms buckets.

Recording is one multiplication and one list increment, so a client can time every change it
receives; the buckets travel between processes as a sparse dict.
"""

from __future__ import annotations

from typing import Any

RESOLUTION = 1e-4  # seconds per bucket
LIMIT = 60.0  # seconds; anything longer goes to the last bucket (and `max` keeps the true value)


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (int(LIMIT / RESOLUTION) + 1)
        self.total = 0
        self.max = 0.0
        self.negative = 0  # receive time before the timestamp: clock trouble, counted as 0

    def add(self, seconds: float) -> None:
        if seconds < 0:
            self.negative += 1
            seconds = 0.0
        index = int(seconds / RESOLUTION)
        self.counts[index if index < len(self.counts) else -1] += 1
        self.total += 1
        if seconds > self.max:
            self.max = seconds

    def sparse(self) -> dict[str, Any]:
        """What crosses a process boundary: the non-empty buckets and the totals."""
        return {
            "buckets": {i: n for i, n in enumerate(self.counts) if n},
            "total": self.total,
            "max": self.max,
            "negative": self.negative,
        }

    def merge(self, sparse: dict[str, Any]) -> None:
        for index, count in sparse["buckets"].items():
            self.counts[int(index)] += count
        self.total += sparse["total"]
        self.max = max(self.max, sparse["max"])
        self.negative += sparse["negative"]

    def percentile_ms(self, fraction: float) -> float | None:
        """The upper edge of the bucket holding the `fraction` quantile, in ms (None: no samples)."""
        if not self.total:
            return None
        rank = max(1, round(fraction * self.total))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return round(min((index + 1) * RESOLUTION, self.max) * 1000, 1)
        return round(self.max * 1000, 1)

    def summary(self) -> dict[str, Any]:
        return {
            "samples": self.total,
            "p50_ms": self.percentile_ms(0.50),
            "p90_ms": self.percentile_ms(0.90),
            "p99_ms": self.percentile_ms(0.99),
            "max_ms": round(self.max * 1000, 1) if self.total else None,
            "negative": self.negative,
        }
