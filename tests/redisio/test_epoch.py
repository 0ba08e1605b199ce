"""The epoch key tells a Redis that lost its data from one that restarted with it."""

from __future__ import annotations

from tests.redisio.server import RedisProcess
from uplion import redisio


async def test_the_epoch_changes_only_when_redis_loses_its_data(own_redis: RedisProcess) -> None:
    seen = redisio.Epoch()
    client = redisio.client(own_redis.url)
    other = redisio.Epoch()
    try:
        assert await seen.claim(client) is False  # the first value is the baseline
        assert await other.claim(client) is False
        assert other.value == seen.value  # every process agrees on the one value
        own_redis.restart(keep_data=True)
        assert await seen.claim(client) is False
        assert seen.generation == 0
        own_redis.restart(keep_data=False)
        assert await seen.claim(client) is True
        assert seen.generation == 1
        assert await other.claim(client) is True  # another process sees the same loss
        assert other.value == seen.value
        assert await seen.claim(client) is False
    finally:
        await client.aclose()


def test_a_value_answered_by_a_script_or_a_pipeline_is_observed() -> None:
    seen = redisio.Epoch()
    assert seen.observe(redisio.epoch_answered(None, "a")) is False
    assert seen.observe(redisio.epoch_answered(b"a", "b")) is False
    assert seen.observe(redisio.epoch_answered(b"c", "d")) is True
    assert (seen.value, seen.generation) == ("c", 1)
