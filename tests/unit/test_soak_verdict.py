"""benchmarks.soak's verdict: errors, RSS growth after the warm-up and replaced processes fail a run."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from benchmarks.load import Shard
from benchmarks.soak import verdict


class _Sampler:
    def __init__(self, samples: list[dict[str, Any]]) -> None:
        self.samples = samples


def _sample(t: float, rss: dict[str, int], pids: dict[str, int] | None = None) -> dict[str, Any]:
    figures = {"requests": 10, "errors": 0, "p99_ms": 1.0}
    return {"t": t, "rest": figures, "grpc": figures, "rss_kib": rss, "pids": pids or {n: 1 for n in rss}}


ARGS = argparse.Namespace(
    seconds=60.0, warmup=20.0, interval=10.0, max_rss_growth=0.10, rest_concurrency=1, grpc_concurrency=1
)


def _shards(errors: int = 0) -> dict[str, Shard]:
    return {
        "rest": Shard(latencies=[0.001] * 10, errors=Counter({"http 503": errors} if errors else {})),
        "grpc": Shard(),
    }


def test_a_flat_run_passes_even_if_memory_grew_during_the_warm_up() -> None:
    samples = [_sample(10, {"a": 100}), _sample(20, {"a": 200}), _sample(60, {"a": 219})]
    report = verdict(_Sampler(samples), _shards(), ARGS)  # type: ignore[arg-type]
    assert report["failures"] == []
    assert report["rss"]["a"]["start_mib"] == round(200 / 1024, 1)


def test_growth_over_the_limit_after_the_warm_up_fails() -> None:
    samples = [_sample(20, {"a": 200, "b": 100}), _sample(60, {"a": 200, "b": 111})]
    report = verdict(_Sampler(samples), _shards(), ARGS)  # type: ignore[arg-type]
    assert len(report["failures"]) == 1 and report["failures"][0].startswith("b: RSS grew 11.0%")


def test_any_error_fails() -> None:
    samples = [_sample(20, {"a": 200}), _sample(60, {"a": 200})]
    report = verdict(_Sampler(samples), _shards(errors=1), ARGS)  # type: ignore[arg-type]
    assert report["error_count"] == 1
    assert report["failures"] == ["errors: {'rest': {'http 503': 1}, 'grpc': {}}"]


def test_a_replaced_process_fails() -> None:
    samples = [_sample(20, {"a": 200}, {"a": 1}), _sample(60, {"a": 200}, {"a": 2})]
    report = verdict(_Sampler(samples), _shards(), ARGS)  # type: ignore[arg-type]
    assert report["failures"] == ["service processes died or were replaced: ['a']"]
