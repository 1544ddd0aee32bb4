"""Shared objects for the micro-benchmarks: one event loop, one in-memory service."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


class LoopRunner:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __call__(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def run_async() -> Iterator[LoopRunner]:
    runner = LoopRunner()
    yield runner
    runner.loop.close()
