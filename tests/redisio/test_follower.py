"""The pub/sub follower: messages in order, and a new subscription after every kind of outage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

from tests.redisio.server import RedisProcess
from tests.redisio.waiting import logged
from uplion import redisio

CHANNEL = "uplion:test"


class Followed:
    """A follower of ``CHANNEL`` running in the test's loop, and what it saw."""

    def __init__(self, url: str) -> None:
        self.client = redisio.client(url)
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()
        self.resubscribed = asyncio.Event()
        self.follower = redisio.Follower(
            self.client, CHANNEL, self.messages.put_nowait,
            on_resubscribed=self.resubscribed.set,
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.follower.subscribe()
        self.task = asyncio.create_task(self.follower.follow())

    async def close(self) -> None:
        if self.task is not None:
            await redisio.cancel(self.task)
        await self.client.aclose()


@pytest_asyncio.fixture(loop_scope="function")
async def followed(own_redis: RedisProcess) -> AsyncIterator[Followed]:
    watcher = Followed(f"{own_redis.url}?socket_timeout=0.3")
    await watcher.start()
    yield watcher
    await watcher.close()


async def publish(url: str, message: str) -> int:
    """Publish once; how many subscribers Redis handed it to."""
    client = redisio.client(url)
    try:
        return int(await client.publish(CHANNEL, message))
    finally:
        await client.aclose()


async def publish_until_heard(url: str, followed: Followed, message: str) -> bytes:
    """Wait for the new subscription, then publish: a message sent before it is lost."""
    async with asyncio.timeout(10):
        await followed.resubscribed.wait()
    assert await publish(url, message) == 1
    async with asyncio.timeout(5):
        return await followed.messages.get()


async def test_messages_arrive_in_order(own_redis: RedisProcess, followed: Followed) -> None:
    for index in range(3):
        assert await publish(own_redis.url, f"m{index}") == 1
    async with asyncio.timeout(5):
        assert [await followed.messages.get() for _ in range(3)] == [b"m0", b"m1", b"m2"]
    assert not followed.resubscribed.is_set()


async def test_a_restarted_server_is_followed_again(
    own_redis: RedisProcess, followed: Followed
) -> None:
    own_redis.restart(keep_data=False)
    assert await publish_until_heard(own_redis.url, followed, "after restart") == b"after restart"


async def test_a_partition_is_noticed_and_followed_again(
    own_redis: RedisProcess, followed: Followed
) -> None:
    with logged("uplion.redisio.follower", "no answer to a ping") as noticed:
        own_redis.freeze()  # no reset: only the unanswered ping tells
        async with asyncio.timeout(10):
            await noticed.wait()
    own_redis.thaw()
    assert await publish_until_heard(own_redis.url, followed, "after thaw") == b"after thaw"


async def test_a_killed_connection_is_followed_again(
    own_redis: RedisProcess, followed: Followed
) -> None:
    admin = redisio.client(own_redis.url)
    try:
        assert await admin.client_kill_filter(_type="pubsub") == 1
    finally:
        await admin.aclose()
    assert await publish_until_heard(own_redis.url, followed, "after kill") == b"after kill"
