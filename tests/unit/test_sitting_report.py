"""The side-by-side benchmark's report: ratios from one sitting's figures."""

from __future__ import annotations

from benchmarks.sitting import markdown, ratio


def test_ratios_and_the_pipeline_line() -> None:
    figures = {
        "rest": {
            "every_role": {
                "POST /orders": {"rps": 9000.0, "cpu_us_per_request": 150, "pipeline": {"pending_at_end": 12}},
                "POST /orders with Idempotency-Key": {"rps": 6300.0},
            },
            "http_only": {"POST /orders": {"rps": 10000.0}},
            "peer": {"POST /orders": {"rps": 3000.0}},
        },
        "grpc": {
            "echo": {"calls_per_s": 10000.0, "cpu_us_per_call": 100},
            "workers_1": {"GetOrder": {"calls_per_s": 7000.0, "cpu_us_per_call": 250}},
        },
    }
    text = markdown(figures)
    assert "| POST /orders | 9000.0 | 10000.0 | 3000.0 | 3.00 | 0.90 | 150 |" in text
    assert "Keyed POST / unkeyed POST: 0.70" in text
    assert "{'pending_at_end': 12}" in text
    assert "| GetOrder | 1 | 7000.0 | 0.70 | 250 |" in text
    assert ratio(None, 3.0) == "-" and ratio(3.0, 0) == "-"
