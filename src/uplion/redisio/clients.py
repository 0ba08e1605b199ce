"""Redis clients: built from a URL, each with a socket timeout and one retry policy.

A URL may carry uplion's own options (``config.REDIS_URL_OPTIONS``: stripped here, each component
reads its own) and redis-py's; ``socket_timeout`` and ``socket_connect_timeout`` (seconds) set
the timeouts of every client made from it (default ``DEFAULT_TIMEOUT_S``). A command waits at
most the socket timeout for its answer, so a network partition without a reset ends in a
``TimeoutError`` instead of a hang; blocking readers (XREAD/XREADGROUP ``BLOCK``) get the socket
timeout plus their longest block.

Retries: a command that fails on a lost connection (reset, refused: an idle connection the server
dropped, a restart) is sent again at most ``RETRIES`` times with jittered exponential waits from
``RETRY_BASE_S`` to ``RETRY_CAP_S``, so it may run twice: callers keep their writes idempotent
or recognise duplicates. A timeout is not retried (the command may be running): it surfaces at
once, after one socket timeout.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from uplion import config

DEFAULT_TIMEOUT_S = 5.0
RETRIES = 3
RETRY_BASE_S = 0.05
RETRY_CAP_S = 1.0
_TIMEOUT_OPTIONS = frozenset({"socket_timeout", "socket_connect_timeout"})

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL points and how long to wait on it: the URL for redis-py (uplion's options and
    the timeouts taken out) and the timeouts in seconds."""

    url: str
    timeout_s: float
    connect_timeout_s: float


def target(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Target:
    """Parse ``url``; its ``socket_timeout``/``socket_connect_timeout`` override ``timeout_s``."""
    plain, _ = config.split_redis_url(url)
    bare, timeouts = config.split_redis_url(plain, _TIMEOUT_OPTIONS)
    for name, value in timeouts.items():
        if value <= 0:
            raise ValueError(f"URL option {name}={value!r} must be positive")
    command_s = timeouts.get("socket_timeout", timeout_s)
    return Target(
        url=bare,
        timeout_s=command_s,
        connect_timeout_s=timeouts.get("socket_connect_timeout", command_s),
    )


def retry_policy(retries: int = RETRIES) -> Retry:
    """Resend a command lost with its connection ``retries`` times; never one that timed out."""
    if retries <= 0:
        return Retry(NoBackoff(), 0)
    backoff = ExponentialWithJitterBackoff(cap=RETRY_CAP_S, base=RETRY_BASE_S)
    return Retry(backoff, retries, supported_errors=(ConnectionError,))


def client(
    url: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    retries: int = RETRIES,
    pool_size: int | None = None,
) -> Redis:
    """A command client for ``url`` (any number of tasks may share it).

    ``timeout_s`` is the socket timeout unless the URL sets one. ``pool_size`` bounds the open
    connections: a command then waits at most the timeout for a free one (else unbounded).
    ``retries=0`` sends every command once (for scripts that must not run twice).
    """
    where = target(url, timeout_s)
    if pool_size is None:
        made: Redis = Redis.from_url(
            where.url, socket_timeout=where.timeout_s,
            socket_connect_timeout=where.connect_timeout_s, retry=retry_policy(retries),
        )
        return made
    pool = BlockingConnectionPool.from_url(
        where.url, max_connections=pool_size, timeout=where.timeout_s,
        socket_timeout=where.timeout_s, socket_connect_timeout=where.connect_timeout_s,
        retry=retry_policy(retries),
    )
    return Redis.from_pool(pool)


def blocking_client(url: str, *, block_s: float, timeout_s: float = DEFAULT_TIMEOUT_S) -> Redis:
    """A client for one task that blocks in Redis up to ``block_s`` per command (XREAD BLOCK):
    its socket timeout is the URL's (or ``timeout_s``) plus ``block_s``."""
    where = target(url, timeout_s)
    made: Redis = Redis.from_url(
        where.url, socket_timeout=where.timeout_s + block_s,
        socket_connect_timeout=where.connect_timeout_s, retry=retry_policy(),
    )
    return made


def timeout_of(redis: Redis) -> float:
    """The socket timeout ``redis`` was made with (``DEFAULT_TIMEOUT_S`` if it has none)."""
    value = redis.connection_pool.connection_kwargs.get("socket_timeout")
    return float(value) if value else DEFAULT_TIMEOUT_S


def redacted(url: str) -> str:
    """``url`` fit for a log or an error: no password, no query."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urllib.parse.urlunsplit((parts.scheme, user + host, parts.path, "", ""))


async def within(seconds: float, call: Awaitable[T]) -> T:
    """``call``'s answer, or Redis's ``TimeoutError`` after ``seconds``: bounds one blocking read
    by its own block time plus the command timeout, where the socket timeout of a blocking
    client allows for its longest block."""
    try:
        async with asyncio.timeout(seconds) as limit:
            return await call
    except TimeoutError:
        if limit.expired():
            raise RedisTimeoutError(f"Redis did not answer within {seconds:g} s") from None
        raise
