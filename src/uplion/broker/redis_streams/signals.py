"""Signals: cancellations and worker statuses, announced to every process through pub/sub.

- Cancellation: the key ``uplion:cancelled:<task id>`` is set while the task could still be
  taken (until its deadline; consumers skip a marked task), and ``uplion:cancel`` tells the
  workers that hold it.
- Status: the hash ``uplion:workers`` keeps each worker's last status (for gateways that start
  later), and ``uplion:status`` announces each new one.

Both channels are followed by ``redisio.Follower``, which subscribes again after an outage. A
cancellation published meanwhile is lost to the workers holding the task (the mark still stops
anyone from starting it); statuses are read again from the hash after every resubscription.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import msgspec

from uplion import protocol, redisio
from uplion.broker import base
from uplion.broker.redis_streams import keys, links

logger = logging.getLogger(__name__)

_MIN_CANCEL_TTL_MS = 1_000


class Signals:
    """Cancellations and statuses of the broker (see the module docstring)."""

    def __init__(self, lifetime: links.Lifetime) -> None:
        self._lifetime = lifetime
        self._cancel_handlers: list[base.CancelHandler] = []
        self._status_handlers: list[base.StatusHandler] = []

    def clear(self) -> None:
        self._cancel_handlers.clear()
        self._status_handlers.clear()

    async def cancel(self, task: protocol.Task) -> None:
        ttl_ms = max(_MIN_CANCEL_TTL_MS, math.ceil((task.deadline - time.time()) * 1000))
        with links.unavailable(f"cancel task {task.id}"):
            async with self._lifetime.open().redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.CANCELLED_PREFIX + task.id, b"1", px=ttl_ms)
                pipe.publish(keys.CANCEL_CHANNEL, task.id)
                await pipe.execute()

    async def subscribe_cancellations(self, handler: base.CancelHandler) -> None:
        self._cancel_handlers.append(handler)
        if len(self._cancel_handlers) > 1:
            return
        try:
            await self._follow(keys.CANCEL_CHANNEL, self._announce_cancellation, None)
        except BaseException:
            self._cancel_handlers.remove(handler)
            raise

    async def publish_status(self, status: protocol.WorkerStatus) -> None:
        payload = protocol.encode(status)
        with links.unavailable(f"publish the status of worker {status.worker}"):
            async with self._lifetime.open().redis.pipeline(transaction=False) as pipe:
                pipe.hset(keys.STATUS_KEY, status.worker, payload)
                pipe.publish(keys.STATUS_CHANNEL, payload)
                await pipe.execute()

    async def subscribe_status(self, handler: base.StatusHandler) -> None:
        self._status_handlers.append(handler)
        try:
            if len(self._status_handlers) == 1:
                await self._follow(keys.STATUS_CHANNEL, self._announce_status,
                                   self._reread_statuses)
            # The snapshot is read after subscribing, so no status falls between the two.
            with links.unavailable("read the workers' statuses"):
                await self._read_statuses(self._lifetime.open().redis, [handler])
        except BaseException:
            self._status_handlers.remove(handler)
            raise

    async def _follow(self, channel: str, dispatch: Callable[[bytes], None],
                      resubscribed: Callable[[], None] | None) -> None:
        """Subscribe to ``channel`` (confirmed before returning), then follow it until close."""
        connections = self._lifetime.open()
        follower = redisio.Follower(connections.redis, channel, dispatch,
                                    on_resubscribed=resubscribed)
        with links.unavailable(f"subscribe to {channel}"):
            await follower.subscribe()
        connections.spawn(follower.follow(), name=f"uplion-{channel}")

    def _reread_statuses(self) -> None:
        """After a resubscription: statuses published meanwhile are in the hash."""
        connections = self._lifetime.live()
        if connections is not None:
            connections.spawn(self._reread(connections.redis), name="uplion-status-snapshot")

    async def _reread(self, redis: redisio.Redis) -> None:
        try:
            await self._read_statuses(redis, list(self._status_handlers))
        except redisio.Error as error:
            logger.warning("reading the workers' statuses again failed: %s", error)

    async def _read_statuses(
        self, redis: redisio.Redis, handlers: list[base.StatusHandler]
    ) -> None:
        """Call ``handlers`` with every recent status in the hash; forget stale ones."""
        stored = await redis.hgetall(keys.STATUS_KEY)
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
                continue
            for handler in handlers:
                _call(handler, status)
        if stale:
            await redis.hdel(keys.STATUS_KEY, *stale)

    def _announce_status(self, data: bytes) -> None:
        try:
            status = protocol.decode_status(data)
        except msgspec.DecodeError:
            logger.warning("ignored a malformed worker status on %s", keys.STATUS_CHANNEL)
            return
        for handler in list(self._status_handlers):
            _call(handler, status)

    def _announce_cancellation(self, data: bytes) -> None:
        task_id = data.decode(errors="replace")
        for handler in list(self._cancel_handlers):
            try:
                handler(task_id)
            except Exception:
                logger.exception("a cancellation handler failed on task %s", task_id)


def _call(handler: base.StatusHandler, status: protocol.WorkerStatus) -> None:
    try:
        handler(status)
    except Exception:
        logger.exception("a status handler failed on worker %s", status.worker)
