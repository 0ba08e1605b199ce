"""A worker on Redis Streams outlives a Redis restart (empty) with its model loaded: the outage
is logged once, and the next task is answered once Redis is back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest_asyncio

from tests.redisio.server import RedisProcess, own_redis
from tests.worker.test_runner import REPLY_TO, Replies, spec, task
from uplion.broker.redis_streams import RedisStreamsBroker
from uplion.worker import Worker
from uplion.worker.engines.echo import EchoEngine

__all__ = ["own_redis"]


class Heard(logging.Handler):
    """Sets ``event`` on the first record whose message contains ``words``."""

    def __init__(self, words: str) -> None:
        super().__init__()
        self.words = words
        self.event = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if self.words in record.getMessage():
            self.event.set()


@pytest_asyncio.fixture(loop_scope="function")
async def brokers(own_redis: RedisProcess) -> AsyncIterator[tuple[RedisStreamsBroker, ...]]:
    url = f"{own_redis.url}?socket_timeout=0.3&socket_connect_timeout=0.3"
    made = tuple(RedisStreamsBroker(url) for _ in range(2))
    for instance in made:
        await instance.start()
    yield made
    for instance in made:
        await instance.close()


async def test_a_worker_waits_out_a_redis_restart_with_its_model_loaded(
    own_redis: RedisProcess, brokers: tuple[RedisStreamsBroker, RedisStreamsBroker],
) -> None:
    gateway, source = brokers
    replies = Replies()
    await gateway.subscribe_replies(REPLY_TO, replies)
    engine = EchoEngine()
    worker = Worker(source, spec(), engine)
    heard = Heard("unreachable")
    runner_log = logging.getLogger("uplion.worker.runner")
    runner_log.addHandler(heard)
    run = asyncio.create_task(worker.run())
    try:
        await gateway.publish(worker.topic, task("before"))
        await replies.wait_for(1, timeout=10)
        own_redis.stop()
        started = time.monotonic()
        async with asyncio.timeout(10):
            await heard.event.wait()
        own_redis.restart(keep_data=False)
        await gateway.publish(worker.topic, task("after"))
        await replies.wait_for(2, timeout=15)
        print(f"\nRedis down and restarted empty: the worker answered again "
              f"{time.monotonic() - started:.1f} s after the stop; its log said: "
              f"{[m for m in heard.messages if 'reachable' in m]}")
        assert not run.done()
        assert worker.engine is engine
        assert sum("unreachable" in m for m in heard.messages) == 1
    finally:
        runner_log.removeHandler(heard)
        worker.stop()
        async with asyncio.timeout(10):
            await run
    assert replies.finals["after"].kind == "final"

