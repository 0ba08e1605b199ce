"""A worker's Redis account (``uplion.broker.redis_acl``) can use the broker and nothing else.

Against the session's real redis-server, with the worker user created by ``ACL SETUSER``: a
worker on that account takes, releases and acks tasks, answers, follows cancellations and
announces its status; a worker process on it serves a gateway end to end; and writing a
principal, usage, limits, or reading another gateway's answers is refused with ``NOPERM``.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.exceptions

from tests import helpers
from uplion import protocol
from uplion.accounts import cache
from uplion.broker import redis_acl
from uplion.broker.redis_streams import RedisStreamsBroker

pytestmark = pytest.mark.redis

PASSWORD = "worker-secret-7f3a"


@pytest.fixture
def worker_url(clean_redis: str) -> Iterator[str]:
    """The session's Redis as the worker user (created here, deleted after the test)."""
    admin = redis.Redis.from_url(clean_redis)
    admin.execute_command("ACL", "SETUSER", redis_acl.WORKER_USER, "reset", "on",
                          f">{PASSWORD}", *redis_acl.worker_rules())
    parts = urllib.parse.urlsplit(clean_redis)
    yield parts._replace(
        netloc=f"{redis_acl.WORKER_USER}:{PASSWORD}@{parts.hostname}:{parts.port}").geturl()
    admin.execute_command("ACL", "DELUSER", redis_acl.WORKER_USER)
    admin.close()


def task(task_id: str, stream: bool = False) -> protocol.Task:
    now = time.time()
    return protocol.Task(
        id=task_id, model="echo", version="1", protocol=protocol.Protocol.OPENAI_CHAT,
        payload={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
        stream=stream, deadline=now + 30, reply_to="gw-1", created=now,
    )


async def test_a_worker_account_does_what_a_worker_does(clean_redis: str, worker_url: str) -> None:
    gateway, worker = RedisStreamsBroker(clean_redis), RedisStreamsBroker(worker_url)
    await gateway.start()
    await worker.start()
    chunks: asyncio.Queue[protocol.Chunk] = asyncio.Queue()
    statuses: asyncio.Queue[protocol.WorkerStatus] = asyncio.Queue()
    cancelled: asyncio.Queue[str] = asyncio.Queue()
    try:
        await gateway.subscribe_replies("gw-1", chunks.put_nowait)
        await gateway.subscribe_status(statuses.put_nowait)
        await worker.subscribe_cancellations(lambda task_id, *_: cancelled.put_nowait(task_id))
        consumer = worker.consumer("model.echo@1", protocol.WORKER_GROUP, "w-1")
        await gateway.publish("model.echo@1", task("t-1"))
        await gateway.publish("model.echo@1", task("t-2"))
        taken = await consumer.take(2, 5)
        assert [d.task.id for d in taken] == ["t-1", "t-2"]
        await consumer.release(taken[1])  # given back: appended again
        assert await consumer.ack(taken[0])
        await worker.send_reply("gw-1", protocol.Chunk(
            task_id="t-1", delivery=taken[0].receipt, seq=0, kind="final", data={}))
        assert (await asyncio.wait_for(chunks.get(), 5)).task_id == "t-1"
        [again] = await consumer.take(1, 5)
        assert (again.task.id, again.attempt) == ("t-2", 1)  # a release is not an attempt
        assert await consumer.ack(again)
        backlog = await worker.backlog("model.echo@1", protocol.WORKER_GROUP)
        assert backlog.total == 0
        await gateway.cancel(task("t-3"))
        assert await asyncio.wait_for(cancelled.get(), 5) == "t-3"
        await worker.publish_status(protocol.WorkerStatus(
            worker="w-1", model="echo", version="1", state="running", slots=2, busy=0,
            at=time.time()))
        assert (await asyncio.wait_for(statuses.get(), 5)).worker == "w-1"
        await consumer.close()
    finally:
        await worker.close()
        await gateway.close()


@pytest.mark.parametrize("command", [
    ("SET", cache.KEY_PREFIX + "tok-1", "forged principal"),
    ("DEL", cache.KEY_PREFIX + "tok-1"),
    ("PUBLISH", cache.CHANNEL, "*"),
    ("XADD", "uplion:usage", "*", "e", "forged usage"),
    ("ZADD", "uplion:rl:t:1:req", "0", "r"),
    ("INCRBY", "uplion:quota:t:1:2025-06", "-1000000"),
    ("XRANGE", "uplion:reply:gw-1", "-", "+"),  # another gateway's answers
    ("SET", "uplion:cancelled:t-1", "1"),
    ("PUBLISH", "uplion:cancel", "t-1"),
    ("EVAL", "return redis.call('SET', KEYS[1], 'x')", "1", cache.KEY_PREFIX + "tok-1"),
    ("FLUSHALL",),
    ("CONFIG", "SET", "requirepass", "x"),
    ("KEYS", "*"),
    ("SCAN", "0"),
    ("ACL", "SETUSER", redis_acl.WORKER_USER, "+@all", "~*"),
])
def test_anything_else_is_refused(worker_url: str, command: tuple[str, ...]) -> None:
    client = redis.Redis.from_url(worker_url)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    finally:
        client.close()


def test_a_worker_process_on_its_account_serves_a_gateway(
    clean_redis: str, worker_url: str, tmp_path: Path
) -> None:
    env = {"UPLION_DATA_DIR": str(tmp_path / "data"), "UPLION_REDIS_URL": clean_redis}
    token = helpers.bootstrap_store(tmp_path, env)
    log = tmp_path / "worker.log"
    worker = helpers.spawn("worker", "--models", str(helpers.ECHO_MODELS), "--model", "echo",
                           log=log, env={**env, "UPLION_BROKER_URL": worker_url})
    try:
        with helpers.platform(tmp_path, broker_url=clean_redis, command="gateway",
                              env=env) as served:
            headers = {"Authorization": f"Bearer {token}"}
            chat: dict[str, Any] = {"model": "echo",
                                    "messages": [{"role": "user", "content": "one two three"}]}
            answer = httpx.post(f"{served.url}/v1/chat/completions", json=chat,
                                headers=headers, timeout=20)
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == "one two three"
            with httpx.stream("POST", f"{served.url}/v1/chat/completions", headers=headers,
                              json={**chat, "stream": True}, timeout=20) as streamed:
                events = [line for line in streamed.iter_lines() if line.startswith("data:")]
            assert events[-1] == "data: [DONE]"
    finally:
        helpers.stop(worker)
    printed = log.read_text()
    assert "NOPERM" not in printed, printed
    assert PASSWORD not in printed
