"""``RedisStreamsBroker``: the broker interface on Redis, put together from its parts."""

from __future__ import annotations

from collections.abc import Callable

from uplion import protocol, redisio
from uplion.broker import base
from uplion.broker.redis_streams import links, replies, signals, topics


class RedisStreamsBroker(base.Broker):
    """Topics, replies, cancellations and statuses on Redis (see ``uplion.broker.redis_streams``).

    The options may also be given in the URL's query (``redis://host:6379/0?visibility_timeout_s=5``),
    where they override the keyword arguments: ``connect(url)`` passes the URL alone, so that is
    how a deployment sets them. ``socket_timeout`` and ``socket_connect_timeout`` (seconds,
    default 5) bound every command; every other query option is redis-py's.
    """

    def __init__(
        self,
        url: str,
        *,
        visibility_timeout_s: float = 30.0,
        task_ttl_s: float = 3600.0,
        reply_ttl_s: float = 300.0,
    ) -> None:
        settings = links.Settings.of(
            url, visibility_timeout_s=visibility_timeout_s, task_ttl_s=task_ttl_s,
            reply_ttl_s=reply_ttl_s,
        )
        self.visibility_timeout_s = settings.visibility_timeout_s
        self._lifetime = links.Lifetime(settings)
        self._topics = topics.Topics(self._lifetime)
        self._replies = replies.Replies(self._lifetime)
        self._signals = signals.Signals(self._lifetime)

    async def start(self) -> None:
        """Check that the server answers (fail fast on a wrong URL)."""
        url = self._lifetime.settings.url
        client = redisio.client(url)
        try:
            with links.unavailable(f"be reached at {redisio.redacted(url)}"):
                await redisio.ping(client)
        finally:
            await client.aclose()

    async def close(self) -> None:
        self._replies.clear()
        self._signals.clear()
        await self._lifetime.close()

    async def publish(self, topic: str, task: protocol.Task) -> None:
        await self._topics.publish(topic, task)

    @property
    def generation(self) -> int:
        return self._lifetime.epoch.generation

    def on_data_lost(self, handler: Callable[[int], None]) -> None:
        self._lifetime.data_lost = handler

    def consumer(self, topic: str, group: str, name: str) -> base.Consumer:
        return topics.RedisConsumer(self._lifetime, topic, group, name)

    async def backlog(self, topic: str, group: str) -> base.Backlog:
        return await self._topics.backlog(topic, group)

    async def send_reply(self, address: str, chunk: protocol.Chunk) -> None:
        await self._replies.send(address, chunk)

    async def subscribe_replies(self, address: str, handler: base.ChunkHandler) -> None:
        """Deliver the chunks sent to ``address`` from now on (a second call replaces handler)."""
        await self._replies.subscribe(address, handler)

    async def cancel(self, task: protocol.Task) -> None:
        await self._signals.cancel(task)

    async def subscribe_cancellations(self, handler: base.CancelHandler) -> None:
        await self._signals.subscribe_cancellations(handler)

    async def publish_status(self, status: protocol.WorkerStatus) -> None:
        await self._signals.publish_status(status)

    async def subscribe_status(self, handler: base.StatusHandler) -> None:
        await self._signals.subscribe_status(handler)
