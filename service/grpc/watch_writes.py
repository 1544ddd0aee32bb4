"""WatchOrders' writes, bounded: a client that stops reading cannot hold its call open forever.

`context.write` waits for the client's HTTP/2 flow-control window, so a client that reads nothing
keeps it waiting. A batch not written within WRITE_SECONDS ends the watch with RESOURCE_EXHAUSTED
(or the watcher's own error, when its buffer overflowed meanwhile). The status is trailers, which
HTTP/2 sends only after the message stuck in the window: an abort waits as long as the client does
not read. So the handler is cancelled ABORT_SECONDS after the failure, which ends the call on the
server (its slot, its access line); the status stays queued for a client that reads again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf.message import Message

from service.domain import CursorExpired, DomainError, WatcherTooSlow
from service.ports import ChangeSubscription

WRITE_SECONDS = 5.0
ABORT_SECONDS = 1.0


class WatcherStalled(WatcherTooSlow):
    """A watcher's client did not take the changes sent within `seconds` (it stopped reading) and
    the watch was closed: too slow by another measure, answered the same way (RESOURCE_EXHAUSTED).
    A matter of this transport's flow control, so it lives here rather than in the domain."""

    def __init__(self, seconds: float) -> None:
        DomainError.__init__(
            self,
            f"the watcher's client stopped reading (changes sent were not taken within {seconds:g} s) "
            "and the watcher was closed; resume from its last cursor",
        )


class BoundedWrites:
    """The writes of one WatchOrders call; create it in the call's handler task."""

    def __init__(self) -> None:
        self._handler = asyncio.current_task()
        self._timers: list[asyncio.TimerHandle] = []

    async def write(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        messages: Iterable[Message],
        subscription: ChangeSubscription,
    ) -> None:
        """Write `messages` in order; raise the watch's closing error when they cannot be within
        WRITE_SECONDS, and let the handler go ABORT_SECONDS after (see the module)."""
        try:
            async with asyncio.timeout(WRITE_SECONDS):  # one timer a batch, not one a message
                for message in messages:
                    await context.write(message)
        except TimeoutError:
            error = await _closing_error(subscription)
            if self._handler is not None:
                loop = asyncio.get_running_loop()
                self._timers.append(loop.call_later(ABORT_SECONDS, self._handler.cancel))
            raise error from None

    def done(self) -> None:
        """The call ended: nothing left to let go."""
        for timer in self._timers:
            timer.cancel()


async def _closing_error(subscription: ChangeSubscription) -> DomainError:
    """The watcher's own error when it has one (its buffer overflowed while the write waited, or
    changes were trimmed unread): it says more than the stall."""
    if subscription.ending:
        try:
            await subscription.changes(0.0)
        except (WatcherTooSlow, CursorExpired) as exc:
            return exc
        except StopAsyncIteration:  # shutting down: the stall is still why this client gets no OK
            pass
    return WatcherStalled(WRITE_SECONDS)
