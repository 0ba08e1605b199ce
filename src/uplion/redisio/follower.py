"""The pub/sub follower: one channel followed for as long as it runs, through Redis outages.

``await follower.subscribe()`` subscribes and waits for Redis to confirm (so nothing published
after it returns is missed); ``follower.follow()`` then hands every message to ``on_message``
until it is cancelled, and closes its connection on the way out.

Outages. A quiet connection is pinged every ``ping_every_s`` (default: the client's socket
timeout); a ping not answered by the next one, or any error, ends that subscription: the follower
subscribes again with backoff (``Backoff``) until Redis answers, then calls ``on_resubscribed``.
Pub/sub keeps nothing: messages published while no subscription stood are lost, which the
callback is there to make up for (drop what a lost message could have invalidated, read a
snapshot again). redis-py may also reconnect by itself inside a read; its new subscription is
confirmed by a ``subscribe`` message, which calls ``on_resubscribed`` just the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from uplion.backoff import Backoff
from uplion.redisio import clients, errors

__all__ = ["Follower"]

logger = logging.getLogger(__name__)


class _Silent(errors.Error):
    """The subscription's connection answered no ping: a partition, or a server that stopped."""


class Follower:
    """Follows ``channel`` on ``redis``; see the module docstring."""

    def __init__(
        self,
        redis: Redis,
        channel: str,
        on_message: Callable[[bytes], None],
        *,
        on_resubscribed: Callable[[], None] | None = None,
        ping_every_s: float | None = None,
    ) -> None:
        self.channel = channel
        self._redis = redis
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._ping_every_s = ping_every_s or clients.timeout_of(redis)
        self._pubsub: PubSub | None = None
        self._subscribed_once = False

    async def subscribe(self) -> None:
        """Subscribe and wait for Redis's confirmation (raises ``errors.Error`` if none comes)."""
        if self._pubsub is None:
            self._pubsub = await self._subscribe()

    async def follow(self) -> None:
        """Dispatch messages until cancelled, resubscribing after every outage."""
        backoff = Backoff()
        try:
            while True:
                if self._pubsub is None:
                    try:
                        self._pubsub = await self._subscribe()
                    except errors.Error as error:
                        logger.debug("subscribing to %s failed: %s", self.channel, error)
                        await backoff.wait()
                        continue
                    backoff.reset()
                    if self._subscribed_once:
                        logger.info("subscribed to %s again", self.channel)
                        self._resubscribed()
                try:
                    await self._read(self._pubsub)
                except errors.Error as error:
                    logger.warning("lost the subscription to %s (%s: %s); resubscribing",
                                   self.channel, type(error).__name__, error)
                    await self._drop()
                    await backoff.wait()
        finally:
            await self._drop()

    async def _subscribe(self) -> PubSub:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            confirmation = await pubsub.get_message(timeout=clients.timeout_of(self._redis))
            if confirmation is None or confirmation["type"] != "subscribe":
                raise _Silent(f"Redis did not confirm the subscription to {self.channel}")
        except BaseException:
            await _close(pubsub)
            raise
        self._subscribed_once = True
        return pubsub

    async def _read(self, pubsub: PubSub) -> None:
        """Read until the connection fails or stays silent past a ping (both raise)."""
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=self._ping_every_s)
            if message is None:
                if pinged:
                    raise _Silent(f"no answer to a ping within {self._ping_every_s:g} s")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            kind = message["type"]
            if kind == "message":
                self._dispatch(message)
            elif kind == "subscribe":  # redis-py reconnected inside a read and resubscribed
                self._resubscribed()

    def _dispatch(self, message: dict[str, Any]) -> None:
        data = message["data"]
        try:
            self._on_message(data.encode() if isinstance(data, str) else bytes(data))
        except Exception:
            logger.exception("a handler of %s failed", self.channel)

    def _resubscribed(self) -> None:
        if self._on_resubscribed is None:
            return
        try:
            self._on_resubscribed()
        except Exception:
            logger.exception("the resubscription handler of %s failed", self.channel)

    async def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await _close(pubsub)


async def _close(pubsub: PubSub) -> None:
    try:
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    except errors.Error as error:
        logger.debug("closing a subscription failed: %s", error)
