"""Dependency state refreshed in the background, read (never queried) by readiness endpoints.

A probe must not wait behind user traffic: `/ready` and gRPC health only read the last outcome of
each check, which a task of the process refreshes every `interval` seconds. Only the `required`
dependencies decide readiness; the others are reported (body, metric) but never fail it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[None]]
OnOutcome = Callable[[str, bool], None]

OK = "ok"
UNAVAILABLE = "unavailable"
UNKNOWN = "unknown"  # not checked yet


class DependencyMonitor:
    def __init__(
        self,
        checks: Mapping[str, Check],
        *,
        required: Collection[str],
        interval: float = 1.0,
        timeout: float = 1.0,
        on_outcome: OnOutcome | None = None,
    ) -> None:
        unknown = set(required) - set(checks)
        if unknown:
            raise ValueError(f"required dependencies without a check: {sorted(unknown)}")
        self._checks = dict(checks)
        self._required = tuple(required)
        self._interval = interval
        self._timeout = timeout
        self._on_outcome = on_outcome
        self._states: dict[str, str] = dict.fromkeys(checks, UNKNOWN)

    def snapshot(self) -> tuple[bool, dict[str, str]]:
        """Ready (every required dependency was ok at its last check) and each dependency's state."""
        states = dict(self._states)
        return all(states[name] == OK for name in self._required), states

    async def refresh(self) -> None:
        """Run every check once, concurrently, each within the timeout."""
        names = list(self._checks)
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(self._checks[name](), self._timeout) for name in names), return_exceptions=True
        )
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            state = OK if not isinstance(outcome, BaseException) else UNAVAILABLE
            if state != self._states[name] and (state != OK or self._states[name] != UNKNOWN):
                # The reason goes to the log only: responses never carry exception text.
                log.warning(
                    "dependency state changed",
                    extra={"dependency": name, "state": state, "error": None if state == OK else repr(outcome)},
                )
            self._states[name] = state
            if self._on_outcome is not None:
                self._on_outcome(name, state == OK)

    async def run(self) -> None:
        """Refresh every `interval` seconds until cancelled."""
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug in a check must not end the monitor
                log.exception("dependency check failed unexpectedly")
            await asyncio.sleep(self._interval)


class Always:
    """No dependencies: always ready (tests, benchmarks, embedding)."""

    def snapshot(self) -> tuple[bool, dict[str, str]]:
        return True, {}


ALWAYS_READY = Always()
