"""What the broker holds open in Redis, its settings, and how Redis errors reach callers.

- ``Settings``: the broker's options, from keyword arguments and the URL's query.
- ``Links``: the clients, scripts and background tasks of the event loop the broker lives in,
  released together in that loop (``close``, or the loop cancelling its tasks as it shuts down).
- ``Lifetime``: opens the links on first use, in the running loop, and refuses other loops.
- ``unavailable(what)``: every Redis error a broker call meets leaves it as
  ``base.BrokerUnavailable`` (a refused, reset or timed-out connection; a server loading its
  data; a command Redis refused where the broker expected none), naming what failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from uplion import config, redisio
from uplion.broker import base

logger = logging.getLogger(__name__)

READ_BLOCK_S = 5.0
"""The longest a blocking read waits in Redis per command (its socket timeout is this more)."""


@contextlib.contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Turn a Redis error inside the block into ``BrokerUnavailable`` saying ``what`` failed."""
    try:
        yield
    except redisio.Error as error:
        raise base.BrokerUnavailable(
            f"Redis could not {what}: {type(error).__name__}: {error}"
        ) from error


@dataclass(frozen=True, slots=True)
class Settings:
    url: str
    visibility_timeout_s: float
    task_ttl_s: float
    reply_ttl_s: float

    @classmethod
    def of(cls, url: str, *, visibility_timeout_s: float, task_ttl_s: float,
           reply_ttl_s: float) -> Settings:
        """The URL's options override the keyword arguments; every value must be positive."""
        _, options = config.split_redis_url(url)
        settings = cls(
            url=url,
            visibility_timeout_s=options.get("visibility_timeout_s", visibility_timeout_s),
            task_ttl_s=options.get("task_ttl_s", task_ttl_s),
            reply_ttl_s=options.get("reply_ttl_s", reply_ttl_s),
        )
        if min(settings.visibility_timeout_s, settings.task_ttl_s, settings.reply_ttl_s) <= 0:
            raise ValueError("the broker's timeouts and TTLs must be positive")
        redisio.target(url)  # a bad timeout option fails here, not at first use
        return settings

    @property
    def reply_ttl_ms(self) -> int:
        return math.ceil(self.reply_ttl_s * 1000)

    def min_id(self) -> str:
        """The MINID trimming bound of streams: entries older than the task TTL, whose task's
        deadline has passed (no task is published with a deadline further ahead)."""
        return str(int((time.time() - self.task_ttl_s) * 1000))


class Links:
    """The clients, scripts and tasks of the loop the broker lives in (see module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.get_running_loop()
        self._settings = settings
        self.redis = redisio.client(settings.url)
        self.timeout_s = redisio.target(settings.url).timeout_s
        """How long a command may wait for its answer (blocking reads: more their block)."""
        self._scripts: dict[tuple[str, ...], redisio.Script] = {}
        self._readers: set[redisio.Redis] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lifetime = self.loop.create_task(self._live(), name="uplion-redis-broker")

    @property
    def open(self) -> bool:
        return not self._lifetime.done()

    def script(self, *files: str) -> redisio.Script:
        """The Lua script made of ``files`` of this package, registered once."""
        found = self._scripts.get(files)
        if found is None:
            found = self._scripts[files] = redisio.script(self.redis, __package__, *files)
        return found

    def reader(self) -> redisio.Redis:
        """A client of its own for one task's blocking reads (up to ``READ_BLOCK_S`` each)."""
        client = redisio.blocking_client(self._settings.url, block_s=READ_BLOCK_S)
        self._readers.add(client)
        return client

    async def close_reader(self, client: redisio.Redis) -> None:
        if client in self._readers:
            self._readers.discard(client)
            await _close(client)

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run a background task until it ends or the broker closes."""
        task = self.loop.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        if self.loop is not asyncio.get_running_loop():
            raise RuntimeError("a RedisStreamsBroker must be closed in the event loop it lives in")
        self._lifetime.cancel()
        await asyncio.wait([self._lifetime])

    async def _live(self) -> None:
        """Wait for the end: ``close``, or the loop cancelling every task as it shuts down."""
        try:
            await self.loop.create_future()
        finally:
            await self._release()

    async def _release(self) -> None:
        await redisio.cancel(*self._tasks)
        for client in [*self._readers, self.redis]:
            await _close(client)
        self._readers.clear()


async def _close(client: redisio.Redis) -> None:
    try:
        await client.aclose()
    except redisio.Error as error:
        logger.warning("closing a Redis connection failed: %s", error)


class Lifetime:
    """The broker's links: opened in the running loop on first use, closed once; and the Redis
    epoch it has seen (``redisio.Epoch``), whose changes are reported to ``data_lost``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._links: Links | None = None
        self.closed = False
        self.epoch = redisio.Epoch()
        self.data_lost: Callable[[int], None] | None = None

    def saw_epoch(self, value: str) -> None:
        """The epoch a command answered; a change means Redis lost what it held before."""
        if self.epoch.observe(value):
            self._report_loss()

    async def check_epoch(self, redis: redisio.Redis) -> None:
        """Read the epoch (setting it when absent), as ``saw_epoch``."""
        if await self.epoch.claim(redis):
            self._report_loss()

    def _report_loss(self) -> None:
        logger.error("Redis lost its data (it restarted empty): the tasks and replies it held "
                     "are gone")
        if self.data_lost is not None:
            self.data_lost(self.epoch.generation)

    def open(self) -> Links:
        if self.closed:
            raise RuntimeError("the broker is closed")
        links = self._links
        if links is None:
            links = self._links = Links(self.settings)
        elif not links.open:
            raise RuntimeError("the event loop this broker lived in has shut down")
        elif links.loop is not asyncio.get_running_loop():
            raise RuntimeError("a RedisStreamsBroker is used from one event loop only")
        return links

    def live(self) -> Links | None:
        """The links if the broker is still open, else None (nothing left to clean up)."""
        links = self._links
        if self.closed or links is None or not links.open:
            return None
        return links

    async def close(self) -> None:
        self.closed = True
        links, self._links = self._links, None
        if links is not None and links.open:
            await links.close()
