"""Per-client token buckets: `rate` requests a second on average, bursts of up to `burst`.

The key is what a transport says the client is (`client_key`): the caller's owner when callers
authenticate, else its address. REST and gRPC both call `admit`, which raises `RateLimited`
beyond the limit; each transport only renders it (429 with RateLimit headers / RESOURCE_EXHAUSTED
with the same hints in trailing metadata). The number of buckets is bounded: beyond `max_keys` the
least recently seen client's bucket is dropped, so a client that sends from many addresses costs
memory for at most `max_keys` of them.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

POLICY_NAME = "client"


class Decision(NamedTuple):
    allowed: bool
    remaining: int  # whole requests left in the bucket after this one
    reset_seconds: int  # until the bucket is full again
    retry_after_seconds: int  # until the next request would be allowed (0 when allowed)


class RateLimited(Exception):
    """A request over its client's limit: what to tell the client comes with it."""

    def __init__(self, retry_after_seconds: int, policy: str, state: str) -> None:
        super().__init__(f"this client's rate limit is exhausted; retry in {retry_after_seconds} s")
        self.retry_after_seconds = retry_after_seconds
        self.policy = policy  # the `RateLimit-Policy` field value
        self.state = state  # the `RateLimit` field value


def client_key(owner: str | None, address: str) -> str:
    """Whom a limit counts: the authenticated caller's owner, else (no authentication) its address."""
    return owner if owner is not None else address


class RateLimiter:
    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        # RFC draft-ietf-httpapi-ratelimit-headers: quota `q` per window `w` seconds.
        self.policy = f'"{POLICY_NAME}";q={burst};w={max(1, math.ceil(burst / rate))}'

    def take(self, key: str) -> Decision:
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - at) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        reset = math.ceil((self._burst - tokens) / self._rate)
        retry_after = 0 if allowed else max(1, math.ceil((1.0 - tokens) / self._rate))
        return Decision(allowed, int(tokens), reset, retry_after)

    def admit(self, key: str) -> Decision:
        """`take`, raising RateLimited when the request is over the limit."""
        decision = self.take(key)
        if not decision.allowed:
            raise RateLimited(decision.retry_after_seconds, self.policy, self.header(decision))
        return decision

    def header(self, decision: Decision) -> str:
        """The `RateLimit` field value for a decision."""
        return f'"{POLICY_NAME}";r={decision.remaining};t={decision.reset_seconds}'

    def __len__(self) -> int:
        return len(self._buckets)
