"""The usage stream: gateways emit one event per finished request, the aggregator consumes them.

One small interface, two implementations:

- ``RedisUsageStream`` (clusters): the stream ``uplion:usage``, consumed by the group ``billing``.
- ``MemoryUsageStream`` (one machine, gateway and aggregator in one process): the same semantics
  inside the event loop. Everything not yet applied is lost if the process dies.

Producer side: ``emit(event)`` is called on the request path, so it only appends the event to an
in-memory buffer and never raises: a full buffer (the stream unreachable for long), a closed
stream, or any fault is logged (at most every few seconds) and counted in ``dropped``. For Redis,
a background task sends the buffer as one pipeline of XADDs every ``linger_s`` (5 ms), or at once
when ``batch_size`` events wait; a failed pipeline is retried with backoff while the buffer
(``max_buffer`` events) holds; ``close`` sends what is left, waiting at most ``close_timeout_s``.

Kept until read: a sent event stays in the gateway's memory until the ``billing`` group has read
it (its last-delivered id passed the event's entry id), checked every ``confirm_every_s``. Each
pipeline and each check also reads Redis's epoch (``redisio.Epoch``): when it changed, Redis
restarted without its data, and every event it took but no aggregator had read is sent again.
At most ``max_buffer`` events are kept that way (the oldest let go first, with a warning: with
no aggregator reading, they are safe only as long as Redis keeps its data). An event sent again,
like one of a pipeline retried after a lost connection, may be appended twice: the aggregator
counts an event id once. Crash window, honestly: events buffered in a gateway that dies
(normally the last few milliseconds; everything buffered while Redis is unreachable) are lost,
and so are events an aggregator had read but not applied when both it and Redis's data are
lost.

Consumer side: ``read(count, block_ms)`` returns ``(entry id, event)`` pairs and ``ack`` marks
entries done. An entry read but not acked (its aggregator died, or could not write) is claimed
again by a reader after ``visibility_timeout_s`` (XAUTOCLAIM, scanned at most every half
timeout), so one event may be read more than once: the aggregator makes applying it idempotent.
A reader may claim back entries it still holds itself (while its database is down, say); it must
recognise them by entry id.

Retention: every XADD trims with ``MINID ~ <now - retention_s>`` (default 7 days). Entries within
the retention are never trimmed, acked or not; an entry older than that is trimmed even if no
aggregator ever applied it (no aggregator ran for a whole retention). The stream holds about
``retention_s x events per second`` entries of some 300 bytes: size the retention to Redis's
memory. ``retention_s`` is also how long the aggregator must remember applied event ids.

Both are options of ``RedisUsageStream`` and may be given in the URL's query
(``redis://host:6379/0?visibility_timeout_s=10&retention_s=86400``), as for the broker; the URL
may be the broker's own (its ``task_ttl_s`` and ``reply_ttl_s`` are ignored here).

Redis is reached through ``uplion.redisio``: commands time out after the URL's
``socket_timeout`` (default 5 s), a read blocks at most 5 s per call, and the claim walk is
``redisio.ClaimCursor``.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from uplion import config, redisio
from uplion.billing import events

logger = logging.getLogger(__name__)

STREAM = "uplion:usage"
GROUP = "billing"
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
DEFAULT_VISIBILITY_TIMEOUT_S = 30.0

Entry = tuple[str, events.UsageEvent]
"""An event as read: its entry id (what ``ack`` takes) and the event."""


class _Sent(NamedTuple):
    """An event Redis took: the epoch it took it in and its entry id (as ``_position``)."""

    epoch: str
    position: tuple[int, int]
    event: events.UsageEvent


def _position(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id (``"<ms>-<seq>"``) as a pair that sorts like Redis sorts ids."""
    milliseconds, _, sequence = redisio.text(entry_id).partition("-")
    return int(milliseconds), int(sequence or 0)

_FIELD = b"e"
_DROP_LOG_INTERVAL_S = 10.0
_READ_BLOCK_S = 5.0


class UsageStream(abc.ABC):
    """Where usage events go (``emit``) and where the aggregator takes them (``read``, ``ack``)."""

    def __init__(self, *, visibility_timeout_s: float, retention_s: float) -> None:
        if min(visibility_timeout_s, retention_s) <= 0:
            raise ValueError("the usage stream's timeout and retention must be positive")
        self.visibility_timeout_s = visibility_timeout_s
        self.retention_s = retention_s
        self.dropped = 0
        """Events given to ``emit`` that will never reach the stream."""
        self._next_drop_log = 0.0

    @abc.abstractmethod
    def emit(self, event: events.UsageEvent) -> None:
        """Queue ``event`` for the stream; cheap, and never raises."""

    @abc.abstractmethod
    async def read(self, count: int, block_ms: int) -> list[Entry]:
        """At most ``count`` entries, waiting up to ``block_ms`` for the first (maybe none)."""

    @abc.abstractmethod
    async def ack(self, entry_ids: Sequence[str]) -> None:
        """These entries are applied: they are never read again."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Send what ``emit`` buffered (where there is somewhere to send it) and let go."""

    def _drop(self, count: int, reason: str) -> None:
        self.dropped += count
        now = time.monotonic()
        if now >= self._next_drop_log:
            self._next_drop_log = now + _DROP_LOG_INTERVAL_S
            logger.error("usage events dropped (%s): %d dropped so far", reason, self.dropped)


def connect(url: str) -> UsageStream:
    """A usage stream for ``url``: ``memory://`` or ``redis://host:port/db[?options]``."""
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        return MemoryUsageStream()
    if scheme in ("redis", "rediss", "unix"):
        return RedisUsageStream(url)
    raise ValueError(f"unknown usage stream URL scheme {scheme!r}: use memory:// or redis://")


class MemoryUsageStream(UsageStream):
    """The stream inside one event loop; see the module docstring."""

    def __init__(
        self,
        *,
        visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
        retention_s: float = DEFAULT_RETENTION_S,
        max_buffer: int = 100_000,
    ) -> None:
        super().__init__(visibility_timeout_s=visibility_timeout_s, retention_s=retention_s)
        self._max_buffer = max_buffer
        self._waiting: collections.deque[Entry] = collections.deque()
        self._pending: dict[str, tuple[events.UsageEvent, float]] = {}
        self._arrived = asyncio.Event()
        self._ids = itertools.count(1)
        self._next_claim = 0.0
        self._closed = False

    def emit(self, event: events.UsageEvent) -> None:
        if self._closed:
            self._drop(1, "the stream is closed")
        elif len(self._waiting) + len(self._pending) >= self._max_buffer:
            self._drop(1, "the stream is full")
        else:
            self._waiting.append((str(next(self._ids)), event))
            self._arrived.set()

    async def read(self, count: int, block_ms: int) -> list[Entry]:
        if count <= 0:
            return []
        claimed = self._claim(count)
        if claimed:
            return claimed
        if not self._waiting and block_ms > 0:
            self._arrived.clear()
            try:
                async with asyncio.timeout(block_ms / 1000):
                    await self._arrived.wait()
            except TimeoutError:
                return []
        now = time.monotonic()
        taken: list[Entry] = []
        while self._waiting and len(taken) < count:
            entry_id, event = entry = self._waiting.popleft()
            self._pending[entry_id] = (event, now)
            taken.append(entry)
        return taken

    async def ack(self, entry_ids: Sequence[str]) -> None:
        for entry_id in entry_ids:
            self._pending.pop(entry_id, None)

    async def close(self) -> None:
        self._closed = True
        left = len(self._waiting) + len(self._pending)
        if left:
            logger.warning("%d usage events were not applied before the stream closed", left)

    def _claim(self, count: int) -> list[Entry]:
        """Entries read but not acked for the visibility timeout, read again (scan throttled)."""
        now = time.monotonic()
        if now < self._next_claim:
            return []
        self._next_claim = now + self.visibility_timeout_s / 2
        idle_since = now - self.visibility_timeout_s
        claimed = [
            (entry_id, event)
            for entry_id, (event, read_at) in self._pending.items()
            if read_at <= idle_since
        ][:count]
        for entry_id, event in claimed:
            self._pending[entry_id] = (event, now)
        return claimed


class RedisUsageStream(UsageStream):
    """The stream ``uplion:usage`` and its group ``billing``; see the module docstring.

    It lives in the event loop that first uses it (its clients and its sending task are made
    there). ``consumer`` names this reader in the group (default: host, pid and a random suffix);
    ``close`` waits at most ``close_timeout_s`` for Redis to take what is buffered.
    """

    def __init__(
        self,
        url: str,
        *,
        consumer: str | None = None,
        visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
        retention_s: float = DEFAULT_RETENTION_S,
        linger_s: float = 0.005,
        batch_size: int = 500,
        max_buffer: int = 100_000,
        close_timeout_s: float = 5.0,
        confirm_every_s: float = 1.0,
    ) -> None:
        self._url, options = config.split_redis_url(url)
        self._timeout_s = redisio.target(self._url).timeout_s
        super().__init__(
            visibility_timeout_s=options.get("visibility_timeout_s", visibility_timeout_s),
            retention_s=options.get("retention_s", retention_s),
        )
        if batch_size <= 0 or max_buffer <= 0 or linger_s < 0:
            raise ValueError("batch_size and max_buffer must be positive, linger_s not negative")
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._linger_s = linger_s
        self._batch_size = batch_size
        self._max_buffer = max_buffer
        self._close_timeout_s = close_timeout_s
        self._confirm_every_s = confirm_every_s
        self._buffer: collections.deque[events.UsageEvent] = collections.deque()
        self._unread: collections.deque[_Sent] = collections.deque()
        """Events Redis took that the ``billing`` group has not read yet, oldest first."""
        self._epoch = redisio.Epoch()
        self._next_confirm = 0.0
        self._next_unguarded_log = 0.0
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._redis: redisio.Redis | None = None
        self._reader: redisio.Redis | None = None
        self._sender: asyncio.Task[None] | None = None
        self._group_ready = False
        self._cursor = redisio.ClaimCursor(
            STREAM, GROUP, self.consumer, idle_s=self.visibility_timeout_s
        )
        self._closing = asyncio.Event()

    # -- producer side

    def emit(self, event: events.UsageEvent) -> None:
        try:
            if self._closing.is_set():
                self._drop(1, "the stream is closed")
                return
            if len(self._buffer) >= self._max_buffer:
                self._drop(1, "the send buffer is full: is Redis reachable?")
                return
            if self._sender is None:
                self._sender = self._open_redis()[1].create_task(
                    self._send_loop(), name="uplion-usage-sender"
                )
            self._buffer.append(event)
            self._wake.set()
        except Exception as error:  # the request path must not fail on billing
            self._drop(1, f"emit failed: {error!r}")

    async def _send_loop(self) -> None:
        """A pipeline every ``linger_s`` or ``batch_size`` events, a read check every
        ``confirm_every_s`` while events wait for the aggregator; ends once closed and empty."""
        backoff = redisio.Backoff()
        while self._buffer or not self._closing.is_set():
            try:
                if self._unread and time.monotonic() >= self._next_confirm:
                    self._next_confirm = time.monotonic() + self._confirm_every_s
                    await self._confirm()
                if not self._buffer:
                    await self._idle()
                    continue
                if len(self._buffer) < self._batch_size and not self._closing.is_set():
                    with contextlib.suppress(TimeoutError):  # linger: let the pipeline fill
                        await asyncio.wait_for(self._closing.wait(), self._linger_s)
                await self._send()
            except Exception as error:  # keep the events and try again, whatever went wrong
                logger.warning("sending %d usage events failed (%s); retrying in up to %.1f s",
                               len(self._buffer), error, backoff.delay)
                await backoff.wait()
            else:
                backoff.reset()

    async def _idle(self) -> None:
        """Wait for events to send (or ``close``), or for the next read check."""
        self._wake.clear()
        if not self._unread:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(),
                                   max(0.0, self._next_confirm - time.monotonic()))

    async def _send(self) -> None:
        """One pipeline of XADDs for the oldest buffered events; they go back on failure."""
        count = min(len(self._buffer), self._batch_size)
        batch = [self._buffer.popleft() for _ in range(count)]
        min_id = str(int((time.time() - self.retention_s) * 1000))
        proposed = redisio.epoch_proposal()
        try:
            async with self._open_redis()[0].pipeline(transaction=False) as pipe:
                pipe.set(redisio.EPOCH_KEY, proposed, nx=True, get=True)
                for event in batch:
                    pipe.xadd(STREAM, {_FIELD: events.encode(event)}, minid=min_id)
                answers = await pipe.execute()
        except BaseException:
            self._buffer.extendleft(reversed(batch))
            raise
        epoch = redisio.epoch_answered(answers[0], proposed)
        self._see_epoch(epoch)
        for entry_id, event in zip(answers[1:], batch, strict=True):
            self._unread.append(_Sent(epoch, _position(entry_id), event))
        self._bound_unread()

    async def _confirm(self) -> None:
        """Let go of the events the aggregators have read; send again those Redis lost."""
        proposed = redisio.epoch_proposal()
        async with self._open_redis()[0].pipeline(transaction=False) as pipe:
            pipe.set(redisio.EPOCH_KEY, proposed, nx=True, get=True)
            pipe.xinfo_groups(STREAM)
            previous, groups = await pipe.execute(raise_on_error=False)
        if isinstance(previous, Exception):
            raise previous
        self._see_epoch(redisio.epoch_answered(previous, proposed))
        if isinstance(groups, Exception):
            if "no such key" in str(groups):
                return  # nothing sent since Redis came back, and no aggregator yet
            raise groups
        info = next((g for g in groups if redisio.text(g["name"]) == GROUP), None)
        if info is None:
            return  # no aggregator has read anything yet
        delivered = _position(info["last-delivered-id"])
        while self._unread and self._unread[0].position <= delivered:
            self._unread.popleft()

    def _see_epoch(self, epoch: str) -> None:
        """Put back in the send buffer every unread event Redis took in another epoch."""
        if epoch == self._epoch.value:  # every unread event was taken in it: nothing to scan
            return
        self._epoch.observe(epoch)
        lost = [sent for sent in self._unread if sent.epoch != epoch]
        if not lost:
            return
        self._unread = collections.deque(sent for sent in self._unread if sent.epoch == epoch)
        self._buffer.extendleft(reversed([sent.event for sent in lost]))
        logger.warning("Redis lost its data (its epoch changed): sending again the %d usage "
                       "events no aggregator had read", len(lost))

    def _bound_unread(self) -> None:
        excess = len(self._unread) - self._max_buffer
        if excess <= 0:
            return
        for _ in range(excess):
            self._unread.popleft()
        now = time.monotonic()
        if now >= self._next_unguarded_log:
            self._next_unguarded_log = now + _DROP_LOG_INTERVAL_S
            logger.warning("no aggregator has read the last %d usage events: the oldest are no "
                           "longer kept here and would be lost if Redis lost its data",
                           len(self._unread))

    async def close(self) -> None:
        """Send what is buffered (waiting at most a few seconds), then disconnect."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._wake.set()
        if self._sender is not None:
            done, _ = await asyncio.wait([self._sender], timeout=self._close_timeout_s)
            if not done:
                await redisio.cancel(self._sender)
        if self._buffer:
            self._drop(len(self._buffer), "Redis did not take them before the stream closed")
            self._buffer.clear()
        for client in (self._reader, self._redis):
            if client is not None:
                try:
                    await client.aclose()
                except redisio.Error as error:
                    logger.debug("closing a Redis connection failed: %s", error)

    # -- consumer side

    async def read(self, count: int, block_ms: int) -> list[Entry]:
        if self._closing.is_set():
            raise RuntimeError("the usage stream is closed")
        if count <= 0:
            return []
        redis, _ = self._open_redis()
        if not self._group_ready:
            await redisio.create_group(redis, STREAM, GROUP)
            self._group_ready = True
        if self._cursor.due():
            claimed = await self._claim(redis, count)
            if claimed:
                return claimed
        if self._reader is None:
            self._reader = redisio.blocking_client(self._url, block_s=_READ_BLOCK_S)
        block = min(block_ms, int(_READ_BLOCK_S * 1000))
        try:
            response = await redisio.within(block / 1000 + self._timeout_s, self._reader.xreadgroup(
                GROUP, self.consumer, {STREAM: ">"}, count=count,
                block=block if block > 0 else None,
            ))
        except redisio.ResponseError as error:
            if not redisio.has_code(error, "NOGROUP"):
                raise
            await redisio.create_group(redis, STREAM, GROUP)
            return []
        return await self._decode(redis, redisio.entries(response))

    async def ack(self, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            await self._open_redis()[0].xack(STREAM, GROUP, *entry_ids)

    def _open_redis(self) -> tuple[redisio.Redis, asyncio.AbstractEventLoop]:
        """The command client and the loop it lives in, made on first use."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._redis = redisio.client(self._url)
        elif self._loop is not loop:
            raise RuntimeError("a RedisUsageStream is used from one event loop only")
        assert self._redis is not None
        return self._redis, loop

    async def _claim(self, redis: redisio.Redis, count: int) -> list[Entry]:
        """Take over entries idle past the visibility timeout: their reader died or stalled."""
        claimed = await self._cursor.claim(redis, count)
        if claimed.trimmed:
            logger.error("%d usage events were trimmed (older than the retention) before being "
                         "applied: lost", claimed.trimmed)
        decoded = await self._decode(redis, claimed.entries)
        if decoded:
            logger.info("%s took over %d usage events not acked in %.0f s",
                        self.consumer, len(decoded), self.visibility_timeout_s)
        return decoded

    async def _decode(self, redis: redisio.Redis, read: Sequence[redisio.Entry]) -> list[Entry]:
        """The events of ``read``; entries that hold none are acked at once, with a warning."""
        decoded: list[Entry] = []
        garbage: list[str] = []
        for entry in read:
            value = entry.field(_FIELD)
            if value is None:
                logger.warning("usage entry %s has no event: acked", entry.id)
                garbage.append(entry.id)
                continue
            try:
                decoded.append((entry.id, events.decode(value)))
            except msgspec.DecodeError as error:
                logger.warning("usage entry %s is not a valid event (%s): acked", entry.id, error)
                garbage.append(entry.id)
        if garbage:
            await redis.xack(STREAM, GROUP, *garbage)
        return decoded
