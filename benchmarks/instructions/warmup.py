"""pytest plugin of the gate: warm each benchmark body up, then let pytest-codspeed measure several calls.

pytest-codspeed warms up only where CPython has the perf trampoline (3.12+) and measures one call.
On 3.11 that is the very first call, whose count depends on what ran before it (first-use caches,
the specialising interpreter's warm-up): reordering the benchmarks moved single-call counts by up
to 82%. BENCH_GATE_WARMUP unmeasured calls, then BENCH_GATE_CALLS calls inside the one measured
region (the runner divides), bring that down to under 5% (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

WARMUP_ENV = "BENCH_GATE_WARMUP"
CALLS_ENV = "BENCH_GATE_CALLS"


@pytest.hookimpl(trylast=True)  # after pytest-codspeed's own pytest_configure made its instrument
def pytest_configure(config: pytest.Config) -> None:
    codspeed = config.pluginmanager.get_plugin("codspeed_plugin")
    if codspeed is None:
        raise pytest.UsageError("the warm-up plugin needs pytest-codspeed")
    warmup = int(os.environ.get(WARMUP_ENV, "0"))
    calls = int(os.environ.get(CALLS_ENV, "1"))
    instrument = codspeed.instrument
    measure_one = instrument.measure

    def measure(marker_options: Any, name: str, uri: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        def body(*args: Any, **kwargs: Any) -> Any:
            for _ in range(calls - 1):
                fn(*args, **kwargs)
            return fn(*args, **kwargs)

        for _ in range(warmup):
            fn(*args, **kwargs)
        return measure_one(marker_options, name, uri, body, *args, **kwargs)

    instrument.measure = measure
