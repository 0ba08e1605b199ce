"""The Redis Streams broker: the queue of a cluster, shared by every gateway and worker.

Keys:

- ``uplion:topic:<topic>``: a stream per topic, one entry per task (field ``t``: the encoded task).
  A worker group is a consumer group of that stream, created by its first consumer at id ``0``,
  so tasks published before any worker existed are delivered too.
- ``uplion:reply:<address>``: a stream per gateway, one entry per chunk (field ``c``). Capped at
  about 100 000 entries, and it expires ``reply_ttl_s`` after the last chunk, so the stream of a
  gateway that died disappears on its own.
- ``uplion:cancelled:<task id>``: set while a cancelled task could still be taken (until its
  deadline); ``uplion:cancel`` is the pub/sub channel that tells workers holding it.

Choices:

- Bounded topics without losing a live task: every XADD trims with ``MINID ~ <now - task_ttl_s>``.
  An entry older than ``task_ttl_s`` carries a task whose deadline has passed, provided no task is
  published with a deadline further than ``task_ttl_s`` ahead (the broker warns once if one is).
  Acked entries are never XDEL'd: trimming reclaims them, and deletions would keep Redis from
  computing a group's lag. Tasks are appended by a Lua script that also repairs the lag Redis
  keeps for a group when trimming removed entries the group had not read (see ``_APPEND``).
- Visibility timeout: a consumer's entries that have been idle for ``visibility_timeout_s`` belong
  to a dead consumer; ``take`` claims them (XAUTOCLAIM, at most every half timeout) before reading
  new ones. A live consumer refreshes the idle time of what it holds every third of the timeout
  (XCLAIM to itself, JUSTID), so a long task is not stolen. The refresh runs as a Lua script that
  first checks the entry is still pending for this consumer: a consumer that stalled past the
  timeout drops what another took over instead of taking it back.
- Release: a stream cannot "unclaim" an entry, so a released task is appended again and its old
  entry acked, atomically (Lua, again only if this consumer still owns it). The task goes to the
  back of the queue.
- Backlog: ``waiting`` is the group's ``lag`` and ``in_flight`` its pending count (XINFO GROUPS).
  When Redis cannot compute the lag (tombstones left by an XDEL after the group's position; the
  broker itself never deletes), the entries after the group's last-delivered id are counted with
  XRANGE, page by page: exact, and only as costly as the backlog is long. A group not created yet
  will be given the whole stream, so its ``waiting`` is the stream's length.
- Needs Redis 7.0 or later (XAUTOCLAIM dropping deleted entries, group lag, ENTRIESREAD).
- Event loop: connections are opened by the event loop that first uses the broker (``start``
  only checks that the server answers, on a connection of its own), and the broker then lives in
  that loop. If the loop shuts down without ``close`` (``asyncio.run`` returning), everything
  the broker opened is closed as the loop cancels its tasks, and ``close`` has nothing left to do.
  Consumers not closed by then are as good as dead: their tasks come back after the timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError, ResponseError

from uplion import config, protocol
from uplion.broker import base

logger = logging.getLogger(__name__)

_TOPIC_PREFIX = "uplion:topic:"
_REPLY_PREFIX = "uplion:reply:"
_CANCELLED_PREFIX = "uplion:cancelled:"
_CANCEL_CHANNEL = "uplion:cancel"
_STATUS_CHANNEL = "uplion:status"
_STATUS_KEY = "uplion:workers"
_TASK_FIELD = b"t"  # also written by the Lua scripts
_CHUNK_FIELD = b"c"
_REPLY_MAXLEN = 100_000
_REPLY_BATCH = 512
_REPLY_BLOCK_MS = 5_000
_MIN_CANCEL_TTL_MS = 1_000
_COUNT_PAGE = 1_000
_SUBSCRIBE_TIMEOUT_S = 10.0
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 5.0
_RETRIES = 3
_RETRY_BASE_S = 0.05
_RETRY_CAP_S = 1.0

# KEYS[1]: the stream; ARGV: group, consumer, entry ids. Refreshes the idle time of the entries
# still pending for this consumer and returns their ids; the others are left to their new owner.
_REFRESH_OWNED = """
local kept = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) > 0
      and #redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID') > 0 then
    kept[#kept + 1] = id
  end
end
return kept
"""

# append(stream, minid, task): XADD with MINID trimming. When trimming removed entries a group had
# not read yet (no worker for longer than the task TTL), Redis would go on counting them in the
# group's lag forever; the group's read counter is set right at once: every entry before the first
# one left counts as read.
_APPEND = """
local function field(flat, name)
  for i = 1, #flat, 2 do
    if flat[i] == name then return flat[i + 1] end
  end
end
local function before(a, b)
  local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
  local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
  a_ms, b_ms = tonumber(a_ms), tonumber(b_ms)
  return a_ms < b_ms or (a_ms == b_ms and tonumber(a_seq) < tonumber(b_seq))
end
local function append(stream, minid, task)
  local id = redis.call('XADD', stream, 'MINID', '~', minid, '*', 't', task)
  local info = redis.call('XINFO', 'STREAM', stream)
  local first_entry = field(info, 'first-entry')
  if not first_entry then return id end  -- trimmed empty: only with clocks a TTL apart
  local first = first_entry[1]
  local read = field(info, 'entries-added') - field(info, 'length')
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local last = field(group, 'last-delivered-id')
    if before(last, first) and field(group, 'entries-read') ~= read then
      redis.call('XGROUP', 'SETID', stream, field(group, 'name'), last, 'ENTRIESREAD', read)
    end
  end
  return id
end
"""

# KEYS[1]: the stream; ARGV: MINID, encoded task.
_PUBLISH = _APPEND + "return append(KEYS[1], ARGV[1], ARGV[2])"

# KEYS[1]: the stream; ARGV: group, consumer, entry id, encoded task, MINID. If the entry is still
# pending for this consumer, acks it and appends the task again; returns 1 if it did.
_RELEASE_OWNED = _APPEND + """
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2]) == 0 then
  return 0
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
append(KEYS[1], ARGV[5], ARGV[4])
return 1
"""

_Fields = dict[bytes | str, bytes | str] | None
_Entry = tuple[bytes | str | None, _Fields]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_entries(response: object) -> list[_Entry]:
    """The entries of an XREAD/XREADGROUP answer on one stream (redis-py's legacy shape)."""
    return [entry for _key, entries in cast(list[list[Any]], response) for entry in entries]


def _field(fields: _Fields, name: bytes) -> bytes | None:
    value = fields.get(name) if fields else None
    return value.encode() if isinstance(value, str) else value


def _is_error(error: ResponseError, code: str) -> bool:
    return str(error).startswith(code)


async def _close_pubsub(pubsub: PubSub) -> None:
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated


def _next_backoff(backoff: float) -> float:
    return min(backoff * 2, _BACKOFF_MAX_S)


def _client(url: str) -> Redis:
    """A client that retries a command on a lost connection (an idle one the server dropped).

    A retried command may have run already: a task or chunk appended twice is answered or
    forwarded once (deliveries and chunk sequence numbers tell), and acks, releases (Lua checks
    ownership) and cancellations are idempotent.
    """
    retry = Retry(ExponentialWithJitterBackoff(cap=_RETRY_CAP_S, base=_RETRY_BASE_S), _RETRIES)
    client: Redis = Redis.from_url(url, retry=retry)
    return client


class _Connections:
    """What the broker opened in the event loop it lives in; released together, in that loop."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.get_running_loop()
        self._url = url
        self.redis = _client(url)
        self.publish = self.redis.register_script(_PUBLISH)
        self.refresh_owned = self.redis.register_script(_REFRESH_OWNED)
        self.release_owned = self.redis.register_script(_RELEASE_OWNED)
        self._dedicated: set[Redis] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lifetime = self.loop.create_task(self._live(), name="uplion-redis-broker")

    @property
    def open(self) -> bool:
        return not self._lifetime.done()

    def dedicated(self) -> Redis:
        """A client of its own (one connection when used by one task): for blocking reads."""
        client = _client(self._url)
        self._dedicated.add(client)
        return client

    async def close_dedicated(self, client: Redis) -> None:
        if client in self._dedicated:
            self._dedicated.discard(client)
            await client.aclose()

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run a background task until it ends or the broker closes."""
        task = self.loop.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        if self.loop is not asyncio.get_running_loop():
            raise RuntimeError("a RedisStreamsBroker must be closed in the event loop it lives in")
        self._lifetime.cancel()
        await asyncio.wait([self._lifetime])

    async def _live(self) -> None:
        """Wait for the end: ``close``, or the loop cancelling every task as it shuts down."""
        try:
            await self.loop.create_future()
        finally:
            await self._release()

    async def _release(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        for client in [*self._dedicated, self.redis]:
            try:
                await client.aclose()
            except RedisError as error:
                logger.warning("closing a Redis connection failed: %s", error)
        self._dedicated.clear()


class RedisStreamsBroker(base.Broker):
    """Topics, replies and cancellations on Redis Streams; see the module docstring.

    The options may also be given in the URL's query (``redis://host:6379/0?visibility_timeout_s=5``),
    where they override the keyword arguments: ``connect(url)`` passes the URL alone, so that is
    how a deployment sets them. Every other query option is redis-py's.
    """

    def __init__(
        self,
        url: str,
        *,
        visibility_timeout_s: float = 30.0,
        task_ttl_s: float = 3600.0,
        reply_ttl_s: float = 300.0,
    ) -> None:
        self._url, options = config.split_redis_url(url)
        visibility_timeout_s = options.get("visibility_timeout_s", visibility_timeout_s)
        task_ttl_s = options.get("task_ttl_s", task_ttl_s)
        reply_ttl_s = options.get("reply_ttl_s", reply_ttl_s)
        if min(visibility_timeout_s, task_ttl_s, reply_ttl_s) <= 0:
            raise ValueError("the broker's timeouts and TTLs must be positive")
        self.visibility_timeout_s = visibility_timeout_s
        self._task_ttl_s = task_ttl_s
        self._reply_ttl_ms = math.ceil(reply_ttl_s * 1000)
        self._connections: _Connections | None = None
        self._closed = False
        self._warned_long_deadline = False
        self._reply_handlers: dict[str, base.ChunkHandler] = {}
        self._cancel_handlers: list[base.CancelHandler] = []
        self._status_handlers: list[base.StatusHandler] = []

    async def start(self) -> None:
        """Check that the server answers (fail fast on a wrong URL)."""
        client = _client(self._url)
        try:
            await client.ping()
        finally:
            await client.aclose()

    async def close(self) -> None:
        self._closed = True
        self._reply_handlers.clear()
        self._cancel_handlers.clear()
        self._status_handlers.clear()
        connections, self._connections = self._connections, None
        if connections is not None and connections.open:
            await connections.close()

    def _open_connections(self) -> _Connections:
        """The connections of the running loop, opened on first use."""
        if self._closed:
            raise RuntimeError("the broker is closed")
        connections = self._connections
        if connections is None:
            connections = self._connections = _Connections(self._url)
        elif not connections.open:
            raise RuntimeError("the event loop this broker lived in has shut down")
        elif connections.loop is not asyncio.get_running_loop():
            raise RuntimeError("a RedisStreamsBroker is used from one event loop only")
        return connections

    def _live_connections(self) -> _Connections | None:
        """The connections if the broker is still open, else None (nothing left to clean up)."""
        connections = self._connections
        if self._closed or connections is None or not connections.open:
            return None
        return connections

    def _min_id(self) -> str:
        """The MINID trimming bound of topic streams: entries older than the task TTL."""
        return str(int((time.time() - self._task_ttl_s) * 1000))

    async def publish(self, topic: str, task: protocol.Task) -> None:
        if not self._warned_long_deadline and task.deadline - time.time() > self._task_ttl_s:
            self._warned_long_deadline = True
            logger.warning(
                "task %s has a deadline beyond task_ttl_s (%.0f s): its entry may be trimmed "
                "before it is taken; raise task_ttl_s", task.id, self._task_ttl_s,
            )
        await self._open_connections().publish(
            keys=[_TOPIC_PREFIX + topic], args=[self._min_id(), protocol.encode(task)]
        )

    def consumer(self, topic: str, group: str, name: str) -> base.Consumer:
        return _RedisConsumer(self, _TOPIC_PREFIX + topic, group, name)

    async def send_reply(self, address: str, chunk: protocol.Chunk) -> None:
        key = _REPLY_PREFIX + address
        async with self._open_connections().redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, {_CHUNK_FIELD: protocol.encode(chunk)}, maxlen=_REPLY_MAXLEN)
            pipe.pexpire(key, self._reply_ttl_ms)
            await pipe.execute()

    async def subscribe_replies(self, address: str, handler: base.ChunkHandler) -> None:
        """Deliver the chunks sent to ``address`` from now on (a second call replaces handler)."""
        connections = self._open_connections()
        reading = address in self._reply_handlers
        self._reply_handlers[address] = handler
        if reading:
            return
        key = _REPLY_PREFIX + address
        last = await connections.redis.xrevrange(key, count=1)
        after = _text(last[0][0]) if last and last[0][0] is not None else "0-0"
        connections.spawn(
            self._read_replies(connections, address, key, after), name=f"uplion-replies-{address}"
        )

    async def _read_replies(
        self, connections: _Connections, address: str, key: str, after: str
    ) -> None:
        client = connections.dedicated()
        backoff = _BACKOFF_FIRST_S
        try:
            while True:
                try:
                    response = await client.xread(
                        {key: after}, count=_REPLY_BATCH, block=_REPLY_BLOCK_MS
                    )
                except RedisError as error:
                    logger.warning(
                        "reading replies of %s failed (%s); retrying in %.1f s",
                        address, error, backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = _next_backoff(backoff)
                    continue
                backoff = _BACKOFF_FIRST_S
                for entry_id, fields in _stream_entries(response):
                    if entry_id is not None:
                        after = _text(entry_id)
                    self._deliver_reply(address, entry_id, fields)
        finally:
            await connections.close_dedicated(client)

    def _deliver_reply(self, address: str, entry_id: bytes | str | None, fields: _Fields) -> None:
        handler = self._reply_handlers.get(address)
        if handler is None:
            return
        raw = _field(fields, _CHUNK_FIELD)
        if raw is None:
            logger.warning("reply entry %r of %s has no chunk: skipped", entry_id, address)
            return
        try:
            chunk = protocol.decode_chunk(raw)
        except msgspec.DecodeError as error:
            logger.warning("reply entry %r of %s is not a chunk (%s): skipped",
                           entry_id, address, error)
            return
        try:
            handler(chunk)
        except Exception:
            logger.exception("the reply handler of %s failed on a chunk of task %s",
                             address, chunk.task_id)

    async def cancel(self, task: protocol.Task) -> None:
        ttl_ms = max(_MIN_CANCEL_TTL_MS, math.ceil((task.deadline - time.time()) * 1000))
        async with self._open_connections().redis.pipeline(transaction=False) as pipe:
            pipe.set(_CANCELLED_PREFIX + task.id, b"1", px=ttl_ms)
            pipe.publish(_CANCEL_CHANNEL, task.id)
            await pipe.execute()

    async def subscribe_cancellations(self, handler: base.CancelHandler) -> None:
        self._cancel_handlers.append(handler)
        if len(self._cancel_handlers) == 1:
            try:
                await self._subscribe(
                    _CANCEL_CHANNEL, lambda data: self._announce_cancellation(_text(data))
                )
            except BaseException:
                self._cancel_handlers.remove(handler)
                raise

    async def publish_status(self, status: protocol.WorkerStatus) -> None:
        payload = protocol.encode(status)
        async with self._open_connections().redis.pipeline(transaction=False) as pipe:
            pipe.hset(_STATUS_KEY, status.worker, payload)
            pipe.publish(_STATUS_CHANNEL, payload)
            await pipe.execute()

    async def subscribe_status(self, handler: base.StatusHandler) -> None:
        self._status_handlers.append(handler)
        if len(self._status_handlers) == 1:
            try:
                await self._subscribe(_STATUS_CHANNEL, self._announce_status)
            except BaseException:
                self._status_handlers.remove(handler)
                raise
        # The snapshot is read after subscribing, so no status falls between the two.
        redis = self._open_connections().redis
        stored = await redis.hgetall(_STATUS_KEY)
        horizon = time.time() - base.STATUS_MEMORY_S
        stale: list[bytes | str] = []
        for worker, raw in stored.items():
            try:
                status = protocol.decode_status(raw if isinstance(raw, bytes) else raw.encode())
            except msgspec.DecodeError:
                stale.append(worker)
                continue
            if status.at < horizon:
                stale.append(worker)
            else:
                handler(status)
        if stale:
            await redis.hdel(_STATUS_KEY, *stale)

    def _announce_status(self, data: bytes) -> None:
        try:
            status = protocol.decode_status(data)
        except msgspec.DecodeError:
            logger.warning("ignored a malformed worker status on %s", _STATUS_CHANNEL)
            return
        for handler in list(self._status_handlers):
            try:
                handler(status)
            except Exception:
                logger.exception("a status handler failed on worker %s", status.worker)

    async def _subscribe(self, channel: str, dispatch: Callable[[bytes], None]) -> None:
        """Subscribe to ``channel`` and call ``dispatch`` with each message until close."""
        connections = self._open_connections()
        pubsub = connections.redis.pubsub()
        try:
            await pubsub.subscribe(channel)
            confirmation = await pubsub.get_message(timeout=_SUBSCRIBE_TIMEOUT_S)
            if confirmation is None or confirmation["type"] != "subscribe":
                raise TimeoutError(f"Redis did not confirm the subscription to {channel}")
        except BaseException:
            await _close_pubsub(pubsub)
            raise
        connections.spawn(self._read_channel(pubsub, channel, dispatch), name=f"uplion-{channel}")

    async def _read_channel(
        self, pubsub: PubSub, channel: str, dispatch: Callable[[bytes], None]
    ) -> None:
        backoff = _BACKOFF_FIRST_S
        try:
            while True:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                except RedisError as error:
                    logger.warning("reading %s failed (%s); retrying in %.1f s",
                                   channel, error, backoff)
                    await asyncio.sleep(backoff)
                    backoff = _next_backoff(backoff)
                    continue
                backoff = _BACKOFF_FIRST_S
                if message is not None and message["type"] == "message":
                    dispatch(message["data"])
        finally:
            await _close_pubsub(pubsub)

    def _announce_cancellation(self, task_id: str) -> None:
        for handler in list(self._cancel_handlers):
            try:
                handler(task_id)
            except Exception:
                logger.exception("a cancellation handler failed on task %s", task_id)

    async def backlog(self, topic: str, group: str) -> base.Backlog:
        redis = self._open_connections().redis
        stream = _TOPIC_PREFIX + topic
        try:
            groups = await redis.xinfo_groups(stream)
        except ResponseError as error:
            if "no such key" in str(error):
                return base.Backlog(waiting=0, in_flight=0)
            raise
        info = next((g for g in groups if _text(g["name"]) == group), None)
        if info is None:
            return base.Backlog(waiting=await redis.xlen(stream), in_flight=0)
        lag = info.get("lag")
        if lag is None:
            lag = await _count_after(redis, stream, _text(info["last-delivered-id"]))
        return base.Backlog(waiting=int(lag), in_flight=int(info["pending"]))


async def _count_after(redis: Redis, stream: str, last_id: str) -> int:
    """How many entries of ``stream`` come after ``last_id`` (paged XRANGE)."""
    count = 0
    start = f"({last_id}"
    while True:
        page = await redis.xrange(stream, min=start, count=_COUNT_PAGE) or []
        count += len(page)
        if len(page) < _COUNT_PAGE or page[-1][0] is None:
            return count
        start = f"({_text(page[-1][0])}"


class _RedisConsumer(base.Consumer):
    """A consumer of a topic's group; the receipt of a delivery is its stream entry id."""

    def __init__(self, broker: RedisStreamsBroker, stream: str, group: str, name: str) -> None:
        self._broker = broker
        self._stream = stream
        self._group = group
        self._name = name
        self._held: dict[str, protocol.Task] = {}
        self._reader: Redis | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._next_claim = 0.0
        self._claim_from: bytes | str = "0-0"
        self._closed = False

    async def take(self, max_count: int, timeout: float) -> list[base.Delivery]:
        if self._closed:
            raise RuntimeError("the consumer is closed")
        if max_count <= 0:
            return []
        connections = self._broker._open_connections()
        reader = await self._open(connections)
        loop = connections.loop
        give_up = loop.time() + timeout
        while True:
            if loop.time() >= self._next_claim:
                deliveries = await self._claim(connections.redis, max_count)
                if deliveries:
                    return deliveries
            block_s = min(give_up, self._next_claim) - loop.time()
            block_ms = math.ceil(block_s * 1000) if block_s > 0 else None
            deliveries = await self._read(connections.redis, reader, max_count, block_ms)
            if deliveries or loop.time() >= give_up:
                return deliveries

    async def ack(self, delivery: base.Delivery) -> bool:
        self._held.pop(delivery.receipt, None)
        redis = self._broker._open_connections().redis
        return bool(await redis.xack(self._stream, self._group, delivery.receipt))

    async def release(self, delivery: base.Delivery) -> None:
        if self._held.pop(delivery.receipt, None) is None:
            return
        connections = self._broker._open_connections()
        await connections.release_owned(
            keys=[self._stream],
            args=[self._group, self._name, delivery.receipt, protocol.encode(delivery.task),
                  self._broker._min_id()],
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        connections = self._broker._live_connections()
        if connections is None:
            return
        for receipt, task in list(self._held.items()):
            await self.release(base.Delivery(task=task, receipt=receipt))
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.wait([self._heartbeat])
        if self._reader is not None:
            await connections.close_dedicated(self._reader)

    async def _open(self, connections: _Connections) -> Redis:
        """On first take: the blocking-read connection, the heartbeat and the group."""
        if self._reader is not None:
            return self._reader
        self._reader = reader = connections.dedicated()
        self._heartbeat = connections.spawn(
            self._beat(connections), name=f"uplion-heartbeat-{self._name}"
        )
        await self._create_group(connections.redis)
        return reader

    async def _create_group(self, redis: Redis) -> None:
        try:
            await redis.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except ResponseError as error:
            if not _is_error(error, "BUSYGROUP"):
                raise

    async def _claim(self, redis: Redis, max_count: int) -> list[base.Delivery]:
        """Take over entries idle past the visibility timeout: their consumer is dead."""
        try:
            next_from, entries, *deleted = await redis.xautoclaim(
                self._stream, self._group, self._name,
                min_idle_time=math.ceil(self._broker.visibility_timeout_s * 1000),
                start_id=self._claim_from, count=max_count,
            )
        except ResponseError as error:
            if not _is_error(error, "NOGROUP"):
                raise
            await self._create_group(redis)
            return []
        now = asyncio.get_running_loop().time()
        finished = _text(next_from) == "0-0"
        self._claim_from = next_from
        # Scan the whole pending list once per half timeout; a partial scan goes on next time.
        self._next_claim = now + self._broker.visibility_timeout_s / 2 if finished else now
        if deleted and deleted[0]:
            logger.info("%d entries of %s were trimmed before being answered",
                        len(deleted[0]), self._stream)
        # Entries this consumer holds came back only because it stalled: it has them already.
        fresh = [e for e in entries if e[0] is None or _text(e[0]) not in self._held]
        deliveries = await self._accept(redis, fresh)
        if deliveries:
            logger.info("%s took over %d tasks of %s from dead consumers",
                        self._name, len(deliveries), self._stream)
        return deliveries

    async def _read(
        self, redis: Redis, reader: Redis, max_count: int, block_ms: int | None
    ) -> list[base.Delivery]:
        try:
            response = await reader.xreadgroup(
                self._group, self._name, {self._stream: ">"}, count=max_count, block=block_ms
            )
        except ResponseError as error:
            if not _is_error(error, "NOGROUP"):
                raise
            await self._create_group(redis)
            return []
        return await self._accept(redis, _stream_entries(response))

    async def _accept(self, redis: Redis, entries: Sequence[_Entry]) -> list[base.Delivery]:
        """Hold and return the live tasks; ack garbage, expired and cancelled ones at once."""
        done: list[str] = []
        candidates: list[tuple[str, protocol.Task]] = []
        for entry_id, fields in entries:
            if entry_id is None:
                continue
            receipt = _text(entry_id)
            task = self._decode(receipt, fields)
            if task is None:
                done.append(receipt)
            else:
                candidates.append((receipt, task))
        deliveries: list[base.Delivery] = []
        if candidates:
            cancelled = await redis.mget([_CANCELLED_PREFIX + task.id for _, task in candidates])
            now = time.time()
            for (receipt, task), mark in zip(candidates, cancelled, strict=True):
                if mark is not None or task.expired(now):
                    logger.debug("task %s is %s: skipped", task.id,
                                 "cancelled" if mark is not None else "expired")
                    done.append(receipt)
                else:
                    self._held[receipt] = task
                    deliveries.append(base.Delivery(task=task, receipt=receipt))
        if done:
            await redis.xack(self._stream, self._group, *done)
        return deliveries

    def _decode(self, receipt: str, fields: _Fields) -> protocol.Task | None:
        raw = _field(fields, _TASK_FIELD)
        if raw is None:
            logger.warning("entry %s of %s has no task (deleted or foreign): acked",
                           receipt, self._stream)
            return None
        try:
            return protocol.decode_task(raw)
        except msgspec.DecodeError as error:
            logger.warning("entry %s of %s is not a task (%s): acked", receipt, self._stream, error)
            return None

    async def _beat(self, connections: _Connections) -> None:
        """Keep the entries held by this live consumer from looking idle."""
        while True:
            await asyncio.sleep(self._broker.visibility_timeout_s / 3)
            if self._held:
                await self._refresh(connections, list(self._held))

    async def _refresh(self, connections: _Connections, held: list[str]) -> None:
        try:
            kept = await connections.refresh_owned(
                keys=[self._stream], args=[self._group, self._name, *held]
            )
        except RedisError as error:
            logger.warning("heartbeat of %s on %s failed: %s", self._name, self._stream, error)
            return
        for receipt in set(held) - {_text(entry_id) for entry_id in kept}:
            task = self._held.pop(receipt, None)
            if task is not None:
                logger.warning(
                    "%s no longer owns task %s of %s: it stalled past the visibility timeout and "
                    "another consumer took the task over, or the entry outlived task_ttl_s",
                    self._name, task.id, self._stream,
                )
