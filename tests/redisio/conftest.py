"""Fixtures of the Redis door's tests: a redis-server of the test's own (``own_redis``)."""

from tests.redisio.server import own_redis

__all__ = ["own_redis"]
