"""Clients from URLs: uplion's options stripped, timeouts on every socket, secrets kept out."""

from __future__ import annotations

import time

import pytest

from tests.redisio.server import RedisProcess
from uplion import redisio


def test_target_strips_uplion_options_and_takes_the_timeouts() -> None:
    where = redisio.target(
        "redis://h:6380/2?visibility_timeout_s=5&socket_timeout=0.25&db=3&task_ttl_s=9"
    )
    assert where == redisio.Target(url="redis://h:6380/2?db=3", timeout_s=0.25,
                                   connect_timeout_s=0.25)
    plain = redisio.target("redis://h/0", timeout_s=2)
    assert (plain.url, plain.timeout_s, plain.connect_timeout_s) == ("redis://h/0", 2, 2)
    split = redisio.target("redis://h/0?socket_connect_timeout=0.1")
    assert (split.timeout_s, split.connect_timeout_s) == (redisio.DEFAULT_TIMEOUT_S, 0.1)
    with pytest.raises(ValueError, match="socket_timeout='soon' is not a number"):
        redisio.target("redis://h/0?socket_timeout=soon")
    with pytest.raises(ValueError, match="must be positive"):
        redisio.target("redis://h/0?socket_timeout=0")


def test_redacted_urls_carry_no_password() -> None:
    assert redisio.redacted("redis://app:s3cret@h:6379/0?socket_timeout=1") == "redis://app@h:6379/0"
    assert redisio.redacted("rediss://:s3cret@h/1") == "rediss://h/1"


async def test_every_client_has_a_socket_timeout() -> None:
    command = redisio.client("redis://127.0.0.1:1/0?socket_timeout=0.3")
    reader = redisio.blocking_client("redis://127.0.0.1:1/0?socket_timeout=0.3", block_s=5)
    default = redisio.client("redis://127.0.0.1:1/0")
    try:
        assert redisio.timeout_of(command) == 0.3
        assert redisio.timeout_of(reader) == 5.3  # longer than its blocking reads
        assert redisio.timeout_of(default) == redisio.DEFAULT_TIMEOUT_S
    finally:
        for client in (command, reader, default):
            await client.aclose()


async def test_a_partition_times_out_and_a_refusal_is_an_outage(own_redis: RedisProcess) -> None:
    client = redisio.client(f"{own_redis.url}?socket_timeout=0.3")
    try:
        await redisio.ping(client)
        own_redis.freeze()
        started = time.monotonic()
        with pytest.raises(redisio.Error) as frozen:
            await client.set("k", "v")
        assert redisio.is_outage(frozen.value)
        assert time.monotonic() - started < 2.0  # one socket timeout, no retry of a timeout
        own_redis.thaw()
        await redisio.ping(client)
        own_redis.stop()
        with pytest.raises(redisio.Error) as refused:
            await client.get("k")
        assert redisio.is_outage(refused.value)
        own_redis.start()
        assert await client.get("k") in (b"v", None)  # it may have run before the freeze
    finally:
        await client.aclose()


async def test_lua_files_are_loaded_and_reloaded_after_a_restart(own_redis: RedisProcess) -> None:
    client = redisio.client(own_redis.url)
    try:
        release = redisio.script(client, "uplion.broker.redis_streams", "owned.lua", "ack.lua")
        assert "local function owned" in redisio.source(
            "uplion.broker.redis_streams", "owned.lua", "ack.lua"
        )
        assert await release(keys=["s"], args=["g", "c", "1-1"]) == 0
        own_redis.restart()  # the server forgets loaded scripts
        assert await release(keys=["s"], args=["g", "c", "1-1"]) == 0
    finally:
        await client.aclose()


def test_backoff_doubles_to_its_maximum_with_jitter_and_resets() -> None:
    backoff = redisio.Backoff(first_s=0.1, max_s=0.4)
    steps, waits = [], []
    for _ in range(4):
        steps.append(backoff.delay)
        waits.append(backoff.next())
    assert steps == [0.1, 0.2, 0.4, 0.4]
    assert all(step / 2 <= wait <= step for step, wait in zip(steps, waits, strict=True))
    backoff.reset()
    assert backoff.delay == 0.1
    with pytest.raises(ValueError, match="0 < first_s <= max_s"):
        redisio.Backoff(first_s=1, max_s=0.5)


def test_the_public_names_of_the_door() -> None:
    assert sorted(redisio.__all__) == sorted([
        "DEFAULT_TIMEOUT_S", "EPOCH_KEY", "RETRIES", "Backoff", "ClaimCursor", "Claimed", "Entry",
        "Epoch", "Error", "epoch_answered", "epoch_proposal",
        "Follower", "Pipeline", "PubSub", "Redis", "ResponseError", "Script", "Target",
        "blocking_client", "cancel", "client", "create_group", "entries", "has_code",
        "is_outage", "ping", "redacted", "script", "source", "target", "text", "timeout_of",
        "within",
    ])
