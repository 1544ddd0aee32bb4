"""GET /orders/changes: the change feed as Server-Sent Events, paced by the client's TCP acks."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from urllib.parse import parse_qsl

from service.domain import Principal
from service.http import sse
from service.http.messages import HttpRequest, HttpResponse, StreamingResponse
from service.http.pacing import Pacer
from service.http.problems import problem_for
from service.http.tcp_acks import PeerAcks, SockDiag
from service.observability.calls import CallEnvelope
from service.orders import OrderService
from service.ports import ChangeSubscription

_HEADERS = (("content-type", sse.CONTENT_TYPE), ("cache-control", "no-store"), ("x-accel-buffering", "no"))


class ChangesRoute:
    """Opens a watch on the service and streams its changes, a comment while idle.

    A stream hands out no more changes while more than `buffer` (WATCH_BUFFER) of those it handed
    out are unacknowledged by its client (where the binding tells the connection): see pacing.
    """

    def __init__(self, service: OrderService, calls: CallEnvelope, *, heartbeat_seconds: float, buffer: int) -> None:
        self._service = service
        self._calls = calls
        self._heartbeat = heartbeat_seconds
        self._buffer = buffer
        self._frames = sse.ChangeFrames()
        self._diag = SockDiag()

    async def watch(self, request: HttpRequest, request_id: str, param: str, principal: Principal) -> HttpResponse:
        order_ids: list[str] = []
        after = request.headers.get("last-event-id")
        for name, value in parse_qsl(request.query_string, keep_blank_values=True):
            if name == "order_id":
                order_ids.append(value)
            elif name == "after" and after is None:
                after = value
        subscription = await self._service.watch(
            order_ids,
            after or None,
            ctx=self._calls.context(request_id, request.headers.get("traceparent"), principal),
        )
        connection = request.connection
        acks = None if connection is None else PeerAcks.start(self._diag, connection.server, connection.client)
        pacer = Pacer(acks, self._buffer)
        return StreamingResponse(200, list(_HEADERS), chunks=self._events(subscription, request_id, pacer))

    async def _events(
        self, subscription: ChangeSubscription, request_id: str, pacer: Pacer
    ) -> AsyncGenerator[bytes, None]:
        """The SSE body: each change as an event, a comment while idle, `event: error` last on failure."""
        frame = self._frames.frame
        try:
            pacer.handed(len(sse.OPENING), 0)
            yield sse.OPENING
            while True:
                if pacer.behind:  # meanwhile the watcher's own buffer fills, and may overflow
                    await pacer.caught_up(lambda: subscription.ending)
                try:
                    batch = await subscription.changes(self._heartbeat)
                except StopAsyncIteration:  # shutting down: the stream ends after its last event
                    return
                except Exception as exc:  # too slow, or unexpected: say so as the last event
                    yield sse.error_event(problem_for(exc, request_id)[2])
                    return
                if not batch:
                    pacer.idle()
                    chunk = sse.HEARTBEAT
                elif len(batch) == 1:
                    chunk = frame(batch[0])
                else:
                    chunk = b"".join([frame(entry) for entry in batch])
                pacer.handed(len(chunk), len(batch))
                yield chunk
        finally:
            subscription.close()
