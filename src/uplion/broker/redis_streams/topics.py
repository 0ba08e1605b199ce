"""Topics: publish tasks, take them in a worker group, claim a dead worker's, ack, release.

A topic is the stream ``uplion:topic:<topic>`` (field ``t``: the encoded task); a worker group
is a consumer group of it, created by its first consumer at id ``0``, so tasks published before
any worker existed are delivered too.

- Bounded without losing a live task: every XADD trims with ``MINID ~ <now - task_ttl_s>``; an
  entry that old carries a task whose deadline has passed, provided no task is published with a
  deadline further than ``task_ttl_s`` ahead (the broker warns once if one is). Acked entries are
  never XDEL'd: trimming reclaims them, and deletions would keep Redis from computing a group's
  lag. Tasks are appended by ``append.lua``, which also repairs the lag Redis keeps for a group
  when trimming removed entries the group had not read.
- Visibility timeout: entries idle for ``visibility_timeout_s`` belong to a dead consumer;
  ``take`` claims them (``redisio.ClaimCursor``, at most every half timeout) before reading new
  ones. A live consumer refreshes the idle time of what it holds every third of the timeout
  (``refresh.lua``), and learns there what it lost: a task another consumer took over (it
  stalled past the timeout) is reported to ``on_lost`` and dropped; a task gone from the stream
  (trimmed, or Redis lost its data) is dropped silently, and its worker may finish it.
- Deliveries: ``Delivery.attempt`` is the entry's delivery count (XREADGROUP: 1; a claim counts
  one more), plus the deliveries before a release (carried in the re-appended entry, field
  ``d``). A release is a task given back, not one its worker failed to answer: it does not
  count, so draining workers never push a task over ``MAX_DELIVERIES``.
- Ack and release check ownership (``ack.lua``, ``release.lua``): a stalled consumer's late ack
  removes nothing another consumer holds now (``ack`` returns False). A stream cannot "unclaim"
  an entry, so a released task is appended again and its old entry acked, atomically.
- Backlog: ``waiting`` is the group's ``lag`` and ``in_flight`` its pending count (XINFO
  GROUPS). When Redis cannot compute the lag (tombstones left by an XDEL after the group's
  position; the broker itself never deletes), the entries after the group's last-delivered id
  are counted with XRANGE, page by page. A group not created yet will be given the whole
  stream, so its ``waiting`` is the stream's length.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence

import msgspec

from uplion import protocol, redisio
from uplion.broker import base
from uplion.broker.redis_streams import keys, links

logger = logging.getLogger(__name__)

_COUNT_PAGE = 1_000
_PUBLISH = ("append.lua", "publish.lua")
_RELEASE = ("append.lua", "owned.lua", "release.lua")
_ACK = ("owned.lua", "ack.lua")
_REFRESH = ("refresh.lua",)
_KEPT, _GONE, _TAKEN = 1, 0, -1


class Topics:
    """Publishing and backlogs of the broker's topics."""

    def __init__(self, lifetime: links.Lifetime) -> None:
        self.lifetime = lifetime
        self._warned_long_deadline = False

    async def publish(self, topic: str, task: protocol.Task) -> None:
        settings = self.lifetime.settings
        if not self._warned_long_deadline and task.deadline - time.time() > settings.task_ttl_s:
            self._warned_long_deadline = True
            logger.warning(
                "task %s has a deadline beyond task_ttl_s (%.0f s): its entry may be trimmed "
                "before it is taken; raise task_ttl_s", task.id, settings.task_ttl_s,
            )
        script = self.lifetime.open().script(*_PUBLISH)
        with links.unavailable(f"publish task {task.id} to {topic}"):
            epoch = await script(keys=[keys.TOPIC_PREFIX + topic, redisio.EPOCH_KEY],
                                 args=[settings.min_id(), protocol.encode(task),
                                       redisio.epoch_proposal()])
        self.lifetime.saw_epoch(redisio.text(epoch))

    async def backlog(self, topic: str, group: str) -> base.Backlog:
        redis = self.lifetime.open().redis
        stream = keys.TOPIC_PREFIX + topic
        with links.unavailable(f"count the backlog of {topic}"):
            try:
                groups = await redis.xinfo_groups(stream)
            except redisio.ResponseError as error:
                if "no such key" in str(error):
                    return base.Backlog(waiting=0, in_flight=0)
                raise
            info = next((g for g in groups if redisio.text(g["name"]) == group), None)
            if info is None:
                return base.Backlog(waiting=await redis.xlen(stream), in_flight=0)
            lag = info.get("lag")
            if lag is None:
                lag = await _count_after(redis, stream, redisio.text(info["last-delivered-id"]))
        return base.Backlog(waiting=int(lag), in_flight=int(info["pending"]))


async def _count_after(redis: redisio.Redis, stream: str, last_id: str) -> int:
    """How many entries of ``stream`` come after ``last_id`` (paged XRANGE)."""
    count = 0
    start = f"({last_id}"
    while True:
        page = await redis.xrange(stream, min=start, count=_COUNT_PAGE) or []
        count += len(page)
        if len(page) < _COUNT_PAGE or page[-1][0] is None:
            return count
        start = f"({redisio.text(page[-1][0])}"


class RedisConsumer(base.Consumer):
    """A consumer of a topic's group; the receipt of a delivery is its stream entry id."""

    def __init__(self, lifetime: links.Lifetime, topic: str, group: str, name: str) -> None:
        self._lifetime = lifetime
        self._topic = topic
        self._stream = keys.TOPIC_PREFIX + topic
        self._group = group
        self._name = name
        self._held: dict[str, base.Delivery] = {}
        self._reader: redisio.Redis | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._cursor = redisio.ClaimCursor(
            self._stream, group, name, idle_s=lifetime.settings.visibility_timeout_s
        )
        self._closed = False

    async def take(self, max_count: int, timeout: float) -> list[base.Delivery]:
        if self._closed:
            raise RuntimeError("the consumer is closed")
        if max_count <= 0:
            return []
        connections = self._lifetime.open()
        loop = connections.loop
        give_up = loop.time() + timeout
        with links.unavailable(f"deliver tasks of {self._topic}"):
            reader = await self._open(connections)
            while True:
                if self._cursor.due():
                    deliveries = await self._claim(connections.redis, max_count)
                    if deliveries:
                        return deliveries
                now = loop.time()
                block_s = min(give_up, self._cursor.due_at, now + links.READ_BLOCK_S) - now
                block_ms = math.ceil(block_s * 1000) if block_s > 0 else None
                deliveries = await self._read(connections, reader, max_count, block_ms)
                if deliveries or loop.time() >= give_up:
                    return deliveries

    async def ack(self, delivery: base.Delivery) -> bool:
        self._held.pop(delivery.receipt, None)
        script = self._lifetime.open().script(*_ACK)
        with links.unavailable(f"ack task {delivery.task.id} of {self._topic}"):
            done = await script(keys=[self._stream],
                                args=[self._group, self._name, delivery.receipt])
        return bool(done)

    async def release(self, delivery: base.Delivery) -> None:
        if self._held.pop(delivery.receipt, None) is None:
            return
        await self._release(self._lifetime.open(), delivery)

    async def _release(self, connections: links.Links, delivery: base.Delivery) -> None:
        script = connections.script(*_RELEASE)
        with links.unavailable(f"give back task {delivery.task.id} of {self._topic}"):
            await script(keys=[self._stream], args=[
                self._group, self._name, delivery.receipt, protocol.encode(delivery.task),
                # Given back, not failed: the next delivery is not counted as another attempt.
                self._lifetime.settings.min_id(), delivery.attempt - 1,
            ])

    async def close(self) -> None:
        """Give back what is held (unless Redis is unreachable: then it comes back after the
        visibility timeout) and stop."""
        if self._closed:
            return
        self._closed = True
        connections = self._lifetime.live()
        if connections is None:
            return
        if self._heartbeat is not None:
            await redisio.cancel(self._heartbeat)
        held, self._held = list(self._held.values()), {}
        for delivery in held:
            try:
                await self._release(connections, delivery)
            except base.BrokerUnavailable as error:
                logger.warning("%s could not give back %d tasks (%s): they come back after the "
                               "visibility timeout", self._name, len(held), error)
                break
        if self._reader is not None:
            await connections.close_reader(self._reader)

    async def _open(self, connections: links.Links) -> redisio.Redis:
        """On first take: the blocking-read connection, the heartbeat and the group."""
        if self._reader is not None:
            return self._reader
        await redisio.create_group(connections.redis, self._stream, self._group)
        self._reader = reader = connections.reader()
        self._heartbeat = connections.spawn(
            self._beat(connections), name=f"uplion-heartbeat-{self._name}"
        )
        return reader

    async def _claim(self, redis: redisio.Redis, max_count: int) -> list[base.Delivery]:
        """Take over entries idle past the visibility timeout: their consumer is dead."""
        claimed = await self._cursor.claim(redis, max_count)
        if claimed.trimmed:
            logger.info("%d entries of %s were trimmed before being answered",
                        claimed.trimmed, self._stream)
        # Entries this consumer holds came back only because it stalled: it has them already.
        fresh = [entry for entry in claimed.entries if entry.id not in self._held]
        deliveries = await self._accept(redis, fresh)
        if deliveries:
            logger.info("%s took over %d tasks of %s from dead consumers",
                        self._name, len(deliveries), self._stream)
        return deliveries

    async def _read(
        self, connections: links.Links, reader: redisio.Redis, max_count: int,
        block_ms: int | None,
    ) -> list[base.Delivery]:
        redis = connections.redis
        limit_s = (block_ms or 0) / 1000 + connections.timeout_s
        try:
            response = await redisio.within(limit_s, reader.xreadgroup(
                self._group, self._name, {self._stream: ">"}, count=max_count, block=block_ms
            ))
        except redisio.ResponseError as error:
            if not redisio.has_code(error, "NOGROUP"):
                raise
            await redisio.create_group(redis, self._stream, self._group)
            return []
        return await self._accept(redis, redisio.entries(response))

    async def _accept(
        self, redis: redisio.Redis, entries: Sequence[redisio.Entry]
    ) -> list[base.Delivery]:
        """Hold and return the live tasks; ack garbage, expired and cancelled ones at once."""
        done: list[str] = []
        candidates: list[tuple[redisio.Entry, protocol.Task]] = []
        for entry in entries:
            task = self._decode(entry)
            if task is None:
                done.append(entry.id)
            else:
                candidates.append((entry, task))
        deliveries: list[base.Delivery] = []
        if candidates:
            cancelled = await redis.mget([keys.CANCELLED_PREFIX + task.id
                                          for _, task in candidates])
            now = time.time()
            for (entry, task), mark in zip(candidates, cancelled, strict=True):
                if mark is not None or task.expired(now):
                    logger.debug("task %s is %s: skipped", task.id,
                                 "cancelled" if mark is not None else "expired")
                    done.append(entry.id)
                    continue
                delivery = base.Delivery(task=task, receipt=entry.id,
                                         attempt=_earlier_deliveries(entry) + entry.deliveries)
                self._held[entry.id] = delivery
                deliveries.append(delivery)
        if done:
            await redis.xack(self._stream, self._group, *done)
        return deliveries

    def _decode(self, entry: redisio.Entry) -> protocol.Task | None:
        raw = entry.field(keys.TASK_FIELD)
        if raw is None:
            logger.warning("entry %s of %s has no task (deleted or foreign): acked",
                           entry.id, self._stream)
            return None
        try:
            return protocol.decode_task(raw)
        except msgspec.DecodeError as error:
            logger.warning("entry %s of %s is not a task (%s): acked", entry.id, self._stream,
                           error)
            return None

    async def _beat(self, connections: links.Links) -> None:
        """Keep the entries held by this live consumer from looking idle."""
        while True:
            await asyncio.sleep(self._lifetime.settings.visibility_timeout_s / 3)
            if self._held:
                await self._refresh(connections, list(self._held))

    async def _refresh(self, connections: links.Links, held: list[str]) -> None:
        try:
            statuses = await connections.script(*_REFRESH)(
                keys=[self._stream], args=[self._group, self._name, *held]
            )
        except redisio.Error as error:
            logger.warning("heartbeat of %s on %s failed: %s", self._name, self._stream, error)
            return
        for receipt, status in zip(held, statuses, strict=True):
            if status == _KEPT:
                continue
            delivery = self._held.pop(receipt, None)
            if delivery is None:
                continue  # acked or released meanwhile
            if status == _TAKEN:
                logger.warning(
                    "%s no longer owns task %s of %s: it stalled past the visibility timeout "
                    "and another consumer took the task over", self._name, delivery.task.id,
                    self._stream,
                )
                self._lost(delivery.task.id)
            else:
                logger.info("task %s of %s is gone from the stream (trimmed, or Redis lost its "
                            "data): its entry is no longer kept", delivery.task.id, self._stream)

    def _lost(self, task_id: str) -> None:
        if self.lost_handler is None:
            return
        try:
            self.lost_handler(task_id)
        except Exception:
            logger.exception("the lost-task handler of %s failed on task %s", self._name, task_id)


def _earlier_deliveries(entry: redisio.Entry) -> int:
    """The deliveries of a released task before it was appended again (field ``d``)."""
    raw = entry.field(keys.DELIVERIES_FIELD)
    try:
        return max(0, int(raw)) if raw is not None else 0
    except ValueError:
        return 0
