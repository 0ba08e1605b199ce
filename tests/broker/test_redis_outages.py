"""The Redis Streams broker through outages of a real redis-server: stopped, frozen, restarted.

Every call fails with ``BrokerUnavailable`` (never a raw Redis error, never a hang: a frozen
server makes it time out after the URL's ``socket_timeout``), and every reader of the broker
resumes once Redis is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
import redis.asyncio

from tests.redisio.server import RedisProcess
from tests.redisio.waiting import until
from uplion import broker, protocol
from uplion.broker.redis_streams import RedisStreamsBroker

TOPIC, GROUP = "model.outage@1", "workers"
TIMEOUT_S = 0.3

MakeBroker = Callable[[], Awaitable[RedisStreamsBroker]]


@pytest_asyncio.fixture(loop_scope="function")
async def make_broker(own_redis: RedisProcess) -> AsyncIterator[MakeBroker]:
    """Started brokers on the test's own Redis, with short timeouts; closed at the end."""
    made: list[RedisStreamsBroker] = []

    async def make() -> RedisStreamsBroker:
        url = (f"{own_redis.url}?socket_timeout={TIMEOUT_S}&socket_connect_timeout={TIMEOUT_S}"
               "&visibility_timeout_s=5")
        instance = RedisStreamsBroker(url)
        await instance.start()
        made.append(instance)
        return instance

    yield make
    for instance in made:
        await instance.close()


def make_task(task_id: str) -> protocol.Task:
    return protocol.Task(
        id=task_id, model="outage", version="1", protocol=protocol.Protocol.OPENAI_CHAT,
        payload={"messages": []}, stream=False, deadline=time.time() + 60,
        reply_to="gw-1", created=time.time(),
    )


def status(worker: str) -> protocol.WorkerStatus:
    return protocol.WorkerStatus(worker=worker, model="outage", version="1", state="running",
                                 slots=1, busy=0, at=time.time(), started=time.time())


async def fails_fast(call: Awaitable[object]) -> float:
    """Seconds until ``call`` raised ``BrokerUnavailable`` (the test fails on a hang)."""
    started = time.monotonic()
    with pytest.raises(broker.BrokerUnavailable):
        async with asyncio.timeout(10):
            await call
    return time.monotonic() - started


async def subscribed(own_redis: RedisProcess, channel: str) -> None:
    """Wait until someone follows ``channel`` again."""
    client = redis.asyncio.Redis.from_url(own_redis.url)

    async def followed() -> bool:
        return bool((await client.pubsub_numsub(channel))[0][1] >= 1)

    try:
        await until(followed)
    finally:
        await client.aclose()


async def test_a_partition_fails_calls_within_the_socket_timeout(
    own_redis: RedisProcess, make_broker: MakeBroker
) -> None:
    gateway, worker = await make_broker(), await make_broker()
    await gateway.publish(TOPIC, make_task("t1"))
    consumer = worker.consumer(TOPIC, GROUP, "w1")
    [delivery] = await consumer.take(1, timeout=2)
    own_redis.freeze()
    try:
        calls = {
            "publish": gateway.publish(TOPIC, make_task("t2")),
            "cancel": gateway.cancel(make_task("t1")),
            "send_reply": worker.send_reply("gw-1", protocol.Chunk("t1", "d", 0, "final")),
            "ack": consumer.ack(delivery),
            "take": consumer.take(1, timeout=0.1),
            "backlog": gateway.backlog(TOPIC, GROUP),
        }
        waited = {name: await fails_fast(call) for name, call in calls.items()}
        print("while frozen:", {name: f"{s:.2f} s" for name, s in waited.items()})
        assert max(waited.values()) < 2.0  # one socket timeout each, with room for a slow CI
    finally:
        own_redis.thaw()
    await gateway.publish(TOPIC, make_task("t3"))
    assert [d.task.id for d in await consumer.take(5, timeout=2)][-1] == "t3"


async def test_readers_resume_after_a_restart_and_get_what_was_sent_meanwhile(
    own_redis: RedisProcess, make_broker: MakeBroker
) -> None:
    gateway, worker = await make_broker(), await make_broker()
    chunks: asyncio.Queue[protocol.Chunk] = asyncio.Queue()
    cancelled: asyncio.Queue[str] = asyncio.Queue()
    statuses: asyncio.Queue[protocol.WorkerStatus] = asyncio.Queue()
    await gateway.subscribe_replies("gw-1", chunks.put_nowait)
    await worker.subscribe_cancellations(cancelled.put_nowait)
    await gateway.subscribe_status(statuses.put_nowait)
    await worker.send_reply("gw-1", protocol.Chunk("t1", "d", 0, "data"))
    async with asyncio.timeout(5):
        assert (await chunks.get()).seq == 0

    own_redis.stop()
    assert await fails_fast(worker.send_reply("gw-1", protocol.Chunk("t1", "d", 1, "data"))) < 2
    own_redis.start()  # same port, same data
    for seq in (1, 2):  # sent while the gateway's reader still waits out its backoff
        await worker.send_reply("gw-1", protocol.Chunk("t1", "d", seq, "data"))
    async with asyncio.timeout(10):
        assert [(await chunks.get()).seq for _ in range(2)] == [1, 2]

    await subscribed(own_redis, "uplion:cancel")
    await gateway.cancel(make_task("t1"))
    async with asyncio.timeout(5):
        assert await cancelled.get() == "t1"
    await subscribed(own_redis, "uplion:status")
    await worker.publish_status(status("w1"))
    async with asyncio.timeout(5):
        assert (await statuses.get()).worker == "w1"


async def test_workers_wait_out_a_restart_with_empty_data(
    own_redis: RedisProcess, make_broker: MakeBroker
) -> None:
    gateway, worker = await make_broker(), await make_broker()
    consumer = worker.consumer(TOPIC, GROUP, "w1")
    await gateway.publish(TOPIC, make_task("t1"))
    [held] = await consumer.take(1, timeout=2)
    own_redis.stop()
    assert await fails_fast(consumer.take(1, timeout=0.5)) < 2
    own_redis.restart(keep_data=False)
    assert await consumer.ack(held) is False  # Redis forgot it: nothing to remove
    await gateway.publish(TOPIC, make_task("t2"))
    assert [d.task.id for d in await consumer.take(1, timeout=2)] == ["t2"]


async def test_closing_while_redis_is_down_never_raises(
    own_redis: RedisProcess, make_broker: MakeBroker
) -> None:
    gateway, worker = await make_broker(), await make_broker()
    for index in range(3):
        await gateway.publish(TOPIC, make_task(f"t{index}"))
    consumer = worker.consumer(TOPIC, GROUP, "w1")
    assert len(await consumer.take(3, timeout=2)) == 3
    own_redis.stop()
    async with asyncio.timeout(10):
        await consumer.close()  # its tasks come back after the visibility timeout instead
        await worker.close()
