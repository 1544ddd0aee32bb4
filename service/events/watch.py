"""The change feed on the events stream: one XREAD loop per process fanned out to its watchers.

The hub reads the stream from the last entry it saw (no consumer group: watching acknowledges
nothing) and appends each change to the bounded buffer of every watcher it concerns (watchers of
given orders are indexed by order id). A watcher whose buffer is full is closed (WatcherTooSlow)
rather than growing memory. A watcher resuming after a cursor first reads the entries after it
with XRANGE, page by page, then joins the hub; the entries the hub had read meanwhile are read
with one more XRANGE up to the hub's position, so nothing is missed and nothing repeats.

Redis unavailable: the hub and catching-up watchers retry with backoff from where they were, so
streams pause and continue with nothing skipped. Should the stream have been trimmed past the
hub's position meanwhile (or while the hub lagged), its watchers end with CursorExpired after the
changes already in their buffers, as a cursor that old would: never a silent gap. `close()`
(shutdown) ends every watcher after the changes already in its buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from service.domain import ChangesUnavailable, CursorExpired, Order, WatcherTooSlow
from service.events.stream import FailureStreak, Fields, sleep_unless, text
from service.ports import FeedBounds, FeedEntry, WatchSpec

log = logging.getLogger(__name__)

READ_COUNT = 1000  # entries per XREAD of the hub
PAGE = 500  # entries per XRANGE of a catching-up watcher
BLOCK_MS = 1000  # below the client's socket timeout (2 s)
BATCH = 256  # most changes one `changes()` call hands over
READY_TIMEOUT = 5.0  # how long a new watcher waits for the hub's first read of the stream's end
CATCH_UP_RETRY = 0.5  # seconds between a catching-up watcher's attempts while Redis is down

_decode_order = msgspec.json.Decoder(Order).decode


def _position(cursor: str) -> tuple[int, int]:
    ms, _, seq = cursor.partition("-")
    return int(ms), int(seq or 0)


def _entry(raw_id: bytes, fields: Fields) -> FeedEntry | None:
    """The change of one stream entry; None (logged) when it does not hold an order."""
    try:
        order = _decode_order(fields[b"payload"])
    except (KeyError, msgspec.DecodeError) as exc:
        log.warning("stream entry without a valid order skipped", extra={"entry": raw_id.decode(), "error": repr(exc)})
        return None
    owner = fields.get(b"owner")
    return FeedEntry(
        cursor=raw_id.decode(),
        event=text(fields, "event"),
        order=order,
        event_id=text(fields, "event_id"),
        occurred_at=text(fields, "occurred_at"),
        owner=owner.decode("utf-8", "replace") if owner is not None else None,
    )


def _bounds(info: Any, stream: str) -> FeedBounds:
    """FeedBounds from an XINFO STREAM reply (or its error: a stream not created yet is empty)."""
    if isinstance(info, ResponseError) and "no such key" in str(info).lower():
        return FeedBounds(first=None, last="0-0", trimmed=False)
    if isinstance(info, Exception):
        raise ChangesUnavailable(f"XINFO STREAM {stream} failed: {info!r}")
    first = info.get("first-entry")
    last = info.get("last-generated-id", b"0-0")
    return FeedBounds(
        first=first[0].decode() if first else None,
        last=last.decode() if isinstance(last, bytes) else str(last),
        trimmed=int(info.get("entries-added", 0)) != int(info.get("length", 0)),
    )


def _gone_after(bounds: FeedBounds, position: tuple[int, int]) -> bool:
    """Whether entries after `position` may have been trimmed away (the rule cursors are judged by)."""
    if not bounds.trimmed:
        return False
    if bounds.first is None:
        return _position(bounds.last) > position
    return _position(bounds.first) > position


def _follows(before: str, after: str) -> bool:
    """Whether `after` is certainly the entry right after `before`: the next id of one millisecond
    (the first id of a later millisecond may or may not have had predecessors since)."""
    ms, seq = _position(before)
    return _position(after) == (ms, seq + 1)


def _selects(spec: WatchSpec, entry: FeedEntry) -> bool:
    if spec.order_ids is not None and str(entry.order.id) not in spec.order_ids:
        return False
    return spec.visible is None or spec.visible(entry.owner)


class Subscription:
    """One watcher: catching up (reading XRANGE pages itself), then live (fed by the hub)."""

    def __init__(self, feed: RedisChangeFeed, spec: WatchSpec, capacity: int) -> None:
        self._feed = feed
        self.spec = spec
        self._capacity = capacity
        self._backlog: deque[FeedEntry] = deque()  # read while catching up (at most a page)
        self._queue: deque[FeedEntry] = deque()  # pushed by the hub, at most `capacity`
        self._wake = asyncio.Event()
        self._position = ""  # catching up: the last entry read (exclusive start of the next page)
        self._until: str | None = None  # catching up to the hub's position (None: to the end)
        # Joined the hub behind its own position (the hub's read was still on its way): what the
        # hub pushes up to here this watcher has read already.
        self._read_through: tuple[int, int] | None = None
        self.live = False
        self._overflowed = False
        self._expired: CursorExpired | None = None  # the hub skipped changes: the last thing said
        self._closed = False

    # -- the hub's side (synchronous) --

    def push(self, entry: FeedEntry) -> None:
        if self._overflowed or self._expired is not None:
            return
        if self._read_through is not None:
            if _position(entry.cursor) <= self._read_through:
                return
            self._read_through = None
        if len(self._queue) >= self._capacity:
            self._overflowed = True
            self._queue.clear()
            self._feed.unregister(self)
        else:
            self._queue.append(entry)
        self._wake.set()

    def end(self) -> None:
        """The feed shuts down: end after what is buffered."""
        self._closed = True
        self._wake.set()

    def expire(self, position: str) -> None:
        """Changes after `position` were trimmed before the hub read them: end with CursorExpired
        after what is buffered, so the client learns of the gap as a resume from there would."""
        self._expired = CursorExpired(position)
        self._feed.unregister(self)
        self._wake.set()

    # -- the watcher's side --

    def start_at(self, position: str) -> None:
        self._position = position

    def take(self, page: list[tuple[bytes, Fields]], full: bool) -> None:
        """Buffer a page read while catching up; after the last one, join the hub."""
        for raw_id, fields in page:
            entry = _entry(raw_id, fields)
            if entry is not None and _selects(self.spec, entry):
                self._backlog.append(entry)
        if page:
            self._position = page[-1][0].decode()
        if full:
            return
        if self._until is None:
            hub_at = self._feed.register(self)
            if _position(hub_at) > _position(self._position):
                self._until = hub_at  # the hub had read further: read up to where it was first
                return
            if _position(hub_at) < _position(self._position):
                self._read_through = _position(self._position)
        self.live = True

    async def changes(self, wait_seconds: float) -> list[FeedEntry]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            if self._overflowed:
                raise WatcherTooSlow(self._capacity)
            if self._backlog:
                return _batch(self._backlog)
            if not self.live:
                if self._closed or self._feed.stopping:
                    raise StopAsyncIteration
                try:
                    page = await self._feed.read_range(self._position, self._until)
                except ChangesUnavailable:
                    remaining = deadline - loop.time()
                    await asyncio.sleep(max(0.0, min(CATCH_UP_RETRY, remaining)))
                    if remaining <= CATCH_UP_RETRY:
                        return []
                    continue
                self.take(page, full=len(page) >= PAGE)
                continue
            if self._queue:
                return _batch(self._queue)
            if self._expired is not None:
                raise self._expired
            if self._closed:
                raise StopAsyncIteration
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    @property
    def ending(self) -> bool:
        return self._overflowed or self._expired is not None or self._closed or self._feed.stopping

    def close(self) -> None:
        self._closed = True
        self._backlog.clear()
        self._queue.clear()
        self._feed.unregister(self)


def _batch(buffer: deque[FeedEntry]) -> list[FeedEntry]:
    if len(buffer) <= BATCH:
        batch = list(buffer)
        buffer.clear()
        return batch
    return [buffer.popleft() for _ in range(BATCH)]


class RedisChangeFeed:
    """The ChangeFeed of one process over the stream `stream`; its hub starts with the first watcher."""

    def __init__(self, redis: aioredis.Redis, stream: str, *, buffer: int = 1000, max_watchers: int = 10_000) -> None:
        self._redis = redis
        self._stream = stream
        self._capacity = buffer
        self._max_watchers = max_watchers
        self._all: set[Subscription] = set()
        self._by_order: dict[str, set[Subscription]] = {}
        self._watchers = 0
        self._at: str | None = None  # the last entry the hub read
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def bounds(self) -> FeedBounds:
        try:
            info = await self._redis.xinfo_stream(self._stream)
        except ResponseError as exc:
            return _bounds(exc, self._stream)
        except (RedisError, OSError) as exc:
            raise ChangesUnavailable(f"XINFO STREAM {self._stream} failed: {exc!r}") from exc
        return _bounds(info, self._stream)

    async def read_range(self, after: str, until: str | None) -> list[tuple[bytes, Fields]]:
        """The page of entries after `after`; CursorExpired when entries after it may have been
        trimmed already (the oldest entry held is newer), so a slow catch-up never skips silently."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xrange(self._stream, min=f"({after}", max=until or "+", count=PAGE)
                pipe.xinfo_stream(self._stream)
                page, info = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise ChangesUnavailable(f"XRANGE {self._stream} failed: {exc!r}") from exc
        if isinstance(page, Exception):
            raise ChangesUnavailable(f"XRANGE {self._stream} failed: {page!r}")
        bounds = _bounds(info, self._stream)
        if bounds.trimmed and bounds.first is not None and _position(bounds.first) > _position(after):
            raise CursorExpired(after)
        return list(page)

    async def subscribe(self, after: str | None, spec: WatchSpec) -> Subscription:
        if self._stop.is_set():
            raise ChangesUnavailable("the service is shutting down")
        if self._watchers >= self._max_watchers:
            raise ChangesUnavailable(f"this process already serves {self._max_watchers} watchers")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="change-feed")
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), READY_TIMEOUT)
            except TimeoutError:
                raise ChangesUnavailable("the events stream cannot be read") from None
        subscription = Subscription(self, spec, self._capacity)
        if after is None:
            self.register(subscription)
            subscription.live = True
        else:
            subscription.start_at(after)
            page = await self.read_range(after, None)
            subscription.take(page, full=len(page) >= PAGE)
        return subscription

    def register(self, subscription: Subscription) -> str:
        """Feed `subscription` from the hub's next read on; returns the last entry the hub read."""
        ids = subscription.spec.order_ids
        if ids is None:
            self._all.add(subscription)
        else:
            for order_id in ids:
                self._by_order.setdefault(order_id, set()).add(subscription)
        self._watchers += 1
        if self._stop.is_set():
            subscription.end()
        assert self._at is not None
        return self._at

    def unregister(self, subscription: Subscription) -> None:
        ids = subscription.spec.order_ids
        if ids is None:
            if subscription not in self._all:
                return
            self._all.discard(subscription)
        else:
            found = False
            for order_id in ids:
                watching = self._by_order.get(order_id)
                if watching is not None and subscription in watching:
                    found = True
                    watching.discard(subscription)
                    if not watching:
                        del self._by_order[order_id]
            if not found:
                return
        self._watchers -= 1

    def close(self) -> None:
        """Stop reading; every watcher ends after the changes already in its buffer."""
        self._stop.set()
        for subscription in [*self._all, *(s for subs in self._by_order.values() for s in subs)]:
            subscription.end()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        streak = FailureStreak(f"Redis (change feed of {self._stream})")
        resumed = False  # the last attempt failed: the stream may have been trimmed meanwhile
        while not self._stop.is_set():
            try:
                if self._at is None:
                    self._at = (await self.bounds()).last
                    self._ready.set()
                reply: Any = await self._redis.xread({self._stream: self._at}, count=READ_COUNT, block=BLOCK_MS)
                entries: list[tuple[bytes, Fields]] = [entry for _stream, read in reply or () for entry in read]
                skipped = await self._skipped(entries) if resumed or len(entries) >= READ_COUNT else False
                streak.succeeded()
            except (RedisError, OSError, ChangesUnavailable) as exc:
                resumed = self._at is not None
                await sleep_unless(self._stop, streak.failed(exc))
                continue
            resumed = False
            if skipped:
                self._expire_all()
            if entries:
                self._dispatch(entries)

    async def _skipped(self, entries: list[tuple[bytes, Fields]]) -> bool:
        """Whether entries after the hub's position may have been trimmed before this read found them.

        Asked after an outage, and after a full read (the hub lags): trimming keeps at least
        STREAM_MAXLEN >= READ_COUNT newer entries, so an unread one can only go when a full read
        follows. Trimming removes the oldest entries only, so bounds read after the XREAD still
        tell. (An XTRIM to fewer than READ_COUNT entries while the hub reads on goes unseen.)
        """
        assert self._at is not None
        if entries and _follows(self._at, entries[0][0].decode()):
            return False
        return _gone_after(await self.bounds(), _position(self._at))

    def _expire_all(self) -> None:
        assert self._at is not None
        what = "the change feed's reader fell behind the stream's trimming: its watchers end as expired"
        log.warning(what, extra={"stream": self._stream, "position": self._at})
        for subscription in {*self._all, *(s for subs in self._by_order.values() for s in subs)}:
            subscription.expire(self._at)

    def _dispatch(self, entries: list[tuple[bytes, Fields]]) -> None:
        everything = tuple(self._all)  # a watcher cut off meanwhile ignores what it is pushed
        for raw_id, fields in entries:
            entry = _entry(raw_id, fields)
            self._at = raw_id.decode()
            if entry is None:
                continue
            for subscription in everything:
                visible = subscription.spec.visible
                if visible is None or visible(entry.owner):
                    subscription.push(entry)
            watching = self._by_order.get(str(entry.order.id))
            if watching:
                for subscription in tuple(watching):
                    visible = subscription.spec.visible
                    if visible is None or visible(entry.owner):
                        subscription.push(entry)
