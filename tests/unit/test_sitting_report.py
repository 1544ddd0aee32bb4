"""The side-by-side benchmark's report: ratios from one sitting's figures."""

from __future__ import annotations

from benchmarks.sitting import markdown, median_round, ratio


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


def test_rounds_report_the_median_round_and_every_rounds_figure() -> None:
    def run(rps: float, cpu: int) -> dict[str, dict[str, float | int]]:
        return {"POST /orders": {"rps": rps, "cpu_us_per_request": cpu}}

    rounds = [
        {"every_role": run(3000.0, 400), "http_only": run(6000.0, 200)},
        {"every_role": run(4000.0, 350), "http_only": run(5000.0, 210)},
        {"every_role": run(3500.0, 380), "http_only": run(7000.0, 190)},
    ]
    merged = median_round(rounds)
    assert merged["every_role"]["POST /orders"] == {
        "rps": 3500.0,
        "cpu_us_per_request": 380,  # the median round's own figures, not a mix of rounds
        "rps_rounds": [3000.0, 3500.0, 4000.0],
    }
    assert merged["http_only"]["POST /orders"]["rps"] == 6000.0
    text = markdown({"rest": merged})
    assert "| POST /orders | 3500.0 | 6000.0 | - | - | 0.58 | 380 |" in text
    assert "- every role POST /orders: 3000.0, 3500.0, 4000.0" in text
    two = median_round(rounds[:2])  # an even count: the lower of the middle two
    assert two["every_role"]["POST /orders"]["rps"] == 3000.0
