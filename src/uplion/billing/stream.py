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
Crash window, honestly: events buffered in a gateway that dies (normally the last few
milliseconds; everything buffered while Redis is unreachable) are lost, and so are the last
writes Redis itself had not persisted if Redis dies (its AOF policy decides: ``appendfsync
everysec`` loses up to a second). A pipeline retried after a lost connection or an error may
append events twice; the aggregator counts an event id once.

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
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import itertools
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

import msgspec
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ResponseError

from uplion import config
from uplion.billing import events

logger = logging.getLogger(__name__)

STREAM = "uplion:usage"
GROUP = "billing"
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
DEFAULT_VISIBILITY_TIMEOUT_S = 30.0

Entry = tuple[str, events.UsageEvent]
"""An event as read: its entry id (what ``ack`` takes) and the event."""

_FIELD = b"e"
_DROP_LOG_INTERVAL_S = 10.0
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 5.0
_RETRIES = 3
_RETRY_BASE_S = 0.05
_RETRY_CAP_S = 1.0


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


def _client(url: str) -> Redis:
    """A client that retries a command on a lost connection (a retried XADD may duplicate)."""
    retry = Retry(ExponentialWithJitterBackoff(cap=_RETRY_CAP_S, base=_RETRY_BASE_S), _RETRIES)
    client: Redis = Redis.from_url(url, retry=retry)
    return client


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _is_error(error: ResponseError, code: str) -> bool:
    return str(error).startswith(code)


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
    ) -> None:
        self._url, options = config.split_redis_url(url)
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
        self._buffer: collections.deque[events.UsageEvent] = collections.deque()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._redis: Redis | None = None
        self._reader: Redis | None = None
        self._sender: asyncio.Task[None] | None = None
        self._group_ready = False
        self._next_claim = 0.0
        self._claim_from: bytes | str = "0-0"
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
        """A pipeline every ``linger_s`` or ``batch_size`` events; ends once closed and empty."""
        backoff = _BACKOFF_FIRST_S
        while self._buffer or not self._closing.is_set():
            if not self._buffer:
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._buffer) < self._batch_size and not self._closing.is_set():
                with contextlib.suppress(TimeoutError):  # linger: let the pipeline fill
                    await asyncio.wait_for(self._closing.wait(), self._linger_s)
            try:
                await self._send()
            except Exception as error:  # keep the events and try again, whatever went wrong
                logger.warning("sending %d usage events failed (%s); retrying in %.1f s",
                               len(self._buffer), error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
            else:
                backoff = _BACKOFF_FIRST_S

    async def _send(self) -> None:
        """One pipeline of XADDs for the oldest buffered events; they go back on failure."""
        count = min(len(self._buffer), self._batch_size)
        batch = [self._buffer.popleft() for _ in range(count)]
        min_id = str(int((time.time() - self.retention_s) * 1000))
        try:
            async with self._open_redis()[0].pipeline(transaction=False) as pipe:
                for event in batch:
                    pipe.xadd(STREAM, {_FIELD: events.encode(event)}, minid=min_id)
                await pipe.execute()
        except BaseException:
            self._buffer.extendleft(reversed(batch))
            raise

    async def close(self) -> None:
        """Send what is buffered (waiting at most a few seconds), then disconnect."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._wake.set()
        if self._sender is not None:
            done, _ = await asyncio.wait([self._sender], timeout=self._close_timeout_s)
            if not done:
                self._sender.cancel()
                await asyncio.wait([self._sender])
        if self._buffer:
            self._drop(len(self._buffer), "Redis did not take them before the stream closed")
            self._buffer.clear()
        for client in (self._reader, self._redis):
            if client is not None:
                await client.aclose()

    # -- consumer side

    async def read(self, count: int, block_ms: int) -> list[Entry]:
        if self._closing.is_set():
            raise RuntimeError("the usage stream is closed")
        if count <= 0:
            return []
        redis, loop = self._open_redis()
        if not self._group_ready:
            await self._create_group(redis)
        if loop.time() >= self._next_claim:
            claimed = await self._claim(redis, loop, count)
            if claimed:
                return claimed
        if self._reader is None:
            self._reader = _client(self._url)
        try:
            response = await self._reader.xreadgroup(
                GROUP, self.consumer, {STREAM: ">"}, count=count,
                block=block_ms if block_ms > 0 else None,
            )
        except ResponseError as error:
            if not _is_error(error, "NOGROUP"):
                raise
            await self._create_group(redis)
            return []
        raw = [entry for _key, entries in cast(list[list[Any]], response) for entry in entries]
        return await self._decode(redis, raw)

    async def ack(self, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            await self._open_redis()[0].xack(STREAM, GROUP, *entry_ids)

    def _open_redis(self) -> tuple[Redis, asyncio.AbstractEventLoop]:
        """The command client and the loop it lives in, made on first use."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._redis = _client(self._url)
        elif self._loop is not loop:
            raise RuntimeError("a RedisUsageStream is used from one event loop only")
        assert self._redis is not None
        return self._redis, loop

    async def _create_group(self, redis: Redis) -> None:
        try:
            await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if not _is_error(error, "BUSYGROUP"):
                raise
        self._group_ready = True

    async def _claim(
        self, redis: Redis, loop: asyncio.AbstractEventLoop, count: int
    ) -> list[Entry]:
        """Take over entries idle past the visibility timeout: their reader died or stalled."""
        try:
            next_from, raw, *deleted = await redis.xautoclaim(
                STREAM, GROUP, self.consumer,
                min_idle_time=math.ceil(self.visibility_timeout_s * 1000),
                start_id=self._claim_from, count=count,
            )
        except ResponseError as error:
            if not _is_error(error, "NOGROUP"):
                raise
            await self._create_group(redis)
            return []
        self._claim_from = next_from
        # Scan the whole pending list once per half timeout; a partial scan goes on next time.
        finished = _text(next_from) == "0-0"
        self._next_claim = loop.time() + (self.visibility_timeout_s / 2 if finished else 0)
        if deleted and deleted[0]:
            logger.error("%d usage events were trimmed (older than the retention) before being "
                         "applied: lost", len(deleted[0]))
        claimed = await self._decode(redis, raw)
        if claimed:
            logger.info("%s took over %d usage events not acked in %.0f s",
                        self.consumer, len(claimed), self.visibility_timeout_s)
        return claimed

    async def _decode(
        self, redis: Redis, raw: Sequence[tuple[bytes | str | None, dict[Any, Any] | None]]
    ) -> list[Entry]:
        """The events of ``raw``; entries that hold none are acked at once, with a warning."""
        decoded: list[Entry] = []
        garbage: list[str] = []
        for raw_id, fields in raw:
            if raw_id is None:
                continue
            entry_id = _text(raw_id)
            value = fields.get(_FIELD) if fields else None
            if value is None:
                logger.warning("usage entry %s has no event: acked", entry_id)
                garbage.append(entry_id)
                continue
            try:
                decoded.append((entry_id, events.decode(value)))
            except msgspec.DecodeError as error:
                logger.warning("usage entry %s is not a valid event (%s): acked", entry_id, error)
                garbage.append(entry_id)
        if garbage:
            await redis.xack(STREAM, GROUP, *garbage)
        return decoded
