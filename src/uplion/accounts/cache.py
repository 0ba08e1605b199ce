"""The principal cache: what the gateway reads on every request, so the database is not on its path.

The database stays the source of truth; a cache is filled from it on a miss (through ``loader``,
an async callable reading one principal) and written through by every admin change. Two kinds:

- ``MemoryPrincipalCache``: a dict in the process (one machine: the only writer is this process).
- ``RedisPrincipalCache``: for a cluster. Records live in Redis under
  ``uplion:principal:<token id>`` (``principal.encode``) with no TTL: while the database is down,
  Redis is the record of every token it holds. A token the database does not know is marked
  there too (the value ``unknown``, for ``negative_ttl_s``), so an unknown token costs one
  database query per TTL for all gateways together, not one per request; creating the token
  replaces the mark. Each instance keeps a small local map in front of Redis (``local_ttl_s``).
  A change writes Redis, then publishes the token ids on ``uplion:principals`` (``*``:
  everything); every instance drops its local copies when the message comes, well within a
  second. The subscription is ``redisio.Follower``'s: after an outage it subscribes again and
  the whole local map is dropped (messages may have been lost meanwhile); the local TTL bounds
  staleness should a message never arrive. Lua scripts: ``put.lua`` and ``fill.lua``.

Both:

- A revocation is final: a record that is not revoked never replaces a revoked one, so a slow
  cache fill or a concurrent admin change cannot bring a revoked token back.
- Concurrent misses of one token share one load; unknown tokens are remembered for a few seconds.
- ``get`` raises ``StoreUnavailable`` when the token is not cached and the loader fails (the
  database is down): the gateway answers 503, not 401.
- ``rebuild(cache, repository)`` (``uplion admin cache rebuild``) reloads every principal from the
  database and drops cached tokens it no longer has.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, cast

import msgspec

from uplion import redisio
from uplion.accounts import principal as principal_record
from uplion.accounts.principal import Principal
from uplion.accounts.repository import Repository

logger = logging.getLogger(__name__)

Loader = Callable[[str], Awaitable[Principal | None]]

KEY_PREFIX = "uplion:principal:"
CHANNEL = "uplion:principals"
_EVERYTHING = "*"
UNKNOWN = b"unknown"
"""The value of a principal's key while the database does not know the token."""
_NEGATIVE_TTL_S = 5.0
_LOCAL_TTL_S = 5.0
_SCAN_COUNT = 1000


class StoreUnavailable(Exception):
    """Neither the cache nor the database can answer (the gateway answers 503)."""


class PrincipalCache(abc.ABC):
    """Principals by token id; ``await start()`` before use, ``await close()`` after."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open what the cache needs."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what ``start`` opened."""

    @abc.abstractmethod
    async def get(self, token_id: str) -> Principal | None:
        """The cached principal, else the loader's (``None``: no such token)."""

    @abc.abstractmethod
    async def put_many(self, principals: Iterable[Principal]) -> None:
        """Write these principals through (after the database committed them)."""

    @abc.abstractmethod
    async def delete(self, token_id: str) -> None:
        """Forget a token: the next ``get`` reads the database."""

    @abc.abstractmethod
    async def replace_all(self, principals: Iterable[Principal]) -> None:
        """Hold exactly these principals (the whole database's)."""

    async def put(self, principal: Principal) -> None:
        await self.put_many([principal])


async def rebuild(cache: PrincipalCache, repository: Repository) -> int:
    """Reload every principal from the database into the cache; the number of principals."""
    principals = await repository.all_principals()
    await cache.replace_all(principals)
    return len(principals)


def _keeps(old: Principal | None, new: Principal) -> bool:
    """Whether a cached record stays in place of ``new`` (a revocation is final)."""
    return old is not None and old.revoked and not new.revoked


class _Outage:
    """Says once that a store went away and once that it came back, not on every request."""

    def __init__(self, store: str) -> None:
        self._store = store
        self.down = False

    def failed(self, error: BaseException) -> None:
        if not self.down:
            self.down = True
            logger.warning("%s is unavailable (%s: %s)", self._store, type(error).__name__, error)

    def recovered(self) -> None:
        if self.down:
            self.down = False
            logger.info("%s is available again", self._store)


class _SharedLoads:
    """Concurrent misses of one token share one load: the store sees one query, not a burst."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Task[Principal | None]] = {}

    async def run(
        self, token_id: str, load: Callable[[], Coroutine[Any, Any, Principal | None]]
    ) -> Principal | None:
        task = self._running.get(token_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(load())
            self._running[token_id] = task
            task.add_done_callback(functools.partial(self._done, token_id))
        return await asyncio.shield(task)

    def _done(self, token_id: str, task: asyncio.Task[Principal | None]) -> None:
        if self._running.get(token_id) is task:
            del self._running[token_id]
        if not task.cancelled():
            task.exception()  # retrieved here: every caller may have given up waiting

    async def cancel(self) -> None:
        running = list(self._running.values())
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)


class _Expiring:
    """Token id → (principal or None, deadline); one TTL, so insertion order is deadline order."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[str, tuple[Principal | None, float]] = {}

    def lookup(self, token_id: str) -> tuple[bool, Principal | None]:
        """``(found, principal)``: found is False when absent or expired."""
        entry = self._entries.get(token_id)
        if entry is None or entry[1] <= time.monotonic():
            return False, None
        return True, entry[0]

    def remember(self, token_id: str, principal: Principal | None) -> None:
        now = time.monotonic()
        while self._entries:  # drop expired entries from the front: memory stays bounded
            oldest = next(iter(self._entries))
            if self._entries[oldest][1] > now:
                break
            del self._entries[oldest]
        self._entries.pop(token_id, None)
        self._entries[token_id] = (principal, now + self._ttl_s)

    def forget(self, token_id: str) -> None:
        self._entries.pop(token_id, None)

    def clear(self) -> None:
        self._entries.clear()


async def _load(loader: Loader, token_id: str, outage: _Outage) -> Principal | None:
    try:
        principal = await loader(token_id)
    except Exception as error:
        outage.failed(error)
        raise StoreUnavailable(
            "the accounts database is unavailable and this token is not cached"
        ) from error
    outage.recovered()
    return principal


class MemoryPrincipalCache(PrincipalCache):
    """Every principal loaded or written, in a dict (one machine)."""

    def __init__(self, loader: Loader, *, negative_ttl_s: float = _NEGATIVE_TTL_S) -> None:
        self._loader = loader
        self._entries: dict[str, Principal] = {}
        self._unknown = _Expiring(negative_ttl_s)
        self._loads = _SharedLoads()
        self._database = _Outage("the accounts database")
        self._writes = 0  # a fill that saw a write during its load does not store what it read

    async def start(self) -> None:
        """Nothing to open: the dict is there."""

    async def close(self) -> None:
        await self._loads.cancel()

    async def get(self, token_id: str) -> Principal | None:
        cached = self._entries.get(token_id)
        if cached is not None:
            return cached
        if self._unknown.lookup(token_id)[0]:
            return None
        return await self._loads.run(token_id, functools.partial(self._fill, token_id))

    async def _fill(self, token_id: str) -> Principal | None:
        writes = self._writes
        loaded = await _load(self._loader, token_id, self._database)
        if writes == self._writes:
            if loaded is None:
                self._unknown.remember(token_id, None)
            else:
                self._entries[token_id] = loaded
        return loaded

    async def put_many(self, principals: Iterable[Principal]) -> None:
        self._writes += 1
        for new in principals:
            self._unknown.forget(new.token_id)
            if not _keeps(self._entries.get(new.token_id), new):
                self._entries[new.token_id] = new

    async def delete(self, token_id: str) -> None:
        self._writes += 1
        self._entries.pop(token_id, None)
        self._unknown.forget(token_id)

    async def replace_all(self, principals: Iterable[Principal]) -> None:
        self._writes += 1
        self._entries = {new.token_id: new for new in principals}
        self._unknown.clear()


class RedisPrincipalCache(PrincipalCache):
    """Principals in Redis, shared by every gateway instance, with a local map in front."""

    def __init__(
        self,
        redis_url: str,
        loader: Loader,
        *,
        local_ttl_s: float = _LOCAL_TTL_S,
        negative_ttl_s: float = _NEGATIVE_TTL_S,
    ) -> None:
        if negative_ttl_s <= 0:
            raise ValueError("negative_ttl_s must be positive")
        self._url = redis_url
        self._loader = loader
        self._local = _Expiring(local_ttl_s)
        self._negative_ttl_ms = math.ceil(negative_ttl_s * 1000)
        self._loads = _SharedLoads()
        self._database = _Outage("the accounts database")
        self._cache = _Outage("the principal cache (Redis)")
        self._invalidations = 0  # a fill that saw one during its reads does not keep what it read
        self._redis: redisio.Redis | None = None
        self._put: redisio.Script | None = None
        self._fill_script: redisio.Script | None = None
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and subscribe to invalidations (fails if Redis does not answer)."""
        redis = redisio.client(self._url)
        follower = redisio.Follower(
            redis, CHANNEL, self._invalidated, on_resubscribed=lambda: self._forget([_EVERYTHING])
        )
        try:
            await follower.subscribe()
        except BaseException:
            await redis.aclose()
            raise
        self._redis = redis
        self._put = redisio.script(redis, __package__, "put.lua")
        self._fill_script = redisio.script(redis, __package__, "fill.lua")
        self._listener = asyncio.get_running_loop().create_task(
            follower.follow(), name="uplion-principal-invalidations"
        )

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await redisio.cancel(listener)
        await self._loads.cancel()
        redis, self._redis, self._put, self._fill_script = self._redis, None, None, None
        if redis is not None:
            await redis.aclose()
        self._local.clear()

    async def get(self, token_id: str) -> Principal | None:
        found, cached = self._local.lookup(token_id)
        if found:
            return cached
        return await self._loads.run(token_id, functools.partial(self._fill, token_id))

    async def _fill(self, token_id: str) -> Principal | None:
        invalidations = self._invalidations
        redis, _, _ = self._started()
        try:
            raw = cast(bytes | None, await redis.get(KEY_PREFIX + token_id))
        except redisio.Error as error:
            self._cache.failed(error)
            loaded = await _load(self._loader, token_id, self._database)
        else:
            self._cache.recovered()
            if raw == UNKNOWN:
                loaded = None  # the database did not know it a moment ago: not asked again
            else:
                loaded = _decode(raw) if raw is not None else None
                if loaded is None:
                    loaded = await _load(self._loader, token_id, self._database)
                    if loaded is None:
                        await self._mark_unknown(redis, token_id)
                    else:
                        loaded = await self._share(loaded)
        if invalidations == self._invalidations:
            self._local.remember(token_id, loaded)
        return loaded

    async def _share(self, loaded: Principal) -> Principal:
        """Store a record read from the database, unless a writer stored one meanwhile."""
        _, _, fill = self._started()
        try:
            stored = cast(bytes, await fill(
                keys=[KEY_PREFIX + loaded.token_id],
                args=[principal_record.encode(loaded), UNKNOWN],
            ))
        except redisio.Error as error:
            self._cache.failed(error)
            return loaded
        written = _decode(stored)
        return written if written is not None else loaded

    async def _mark_unknown(self, redis: redisio.Redis, token_id: str) -> None:
        """Tell every gateway the database does not know ``token_id`` (for the negative TTL),
        unless a writer stored its record meanwhile."""
        try:
            await redis.set(KEY_PREFIX + token_id, UNKNOWN, nx=True, px=self._negative_ttl_ms)
        except redisio.Error as error:
            self._cache.failed(error)

    async def put_many(self, principals: Iterable[Principal]) -> None:
        principals = list(principals)
        if not principals:
            return
        ids = [new.token_id for new in principals]
        redis, put, _ = self._started()
        async with redis.pipeline(transaction=False) as pipe:
            for new in principals:
                await put(
                    keys=[KEY_PREFIX + new.token_id],
                    args=[principal_record.encode(new), "1" if new.revoked else "0"],
                    client=pipe,
                )
            pipe.publish(CHANNEL, " ".join(ids))
            await self._execute(pipe)
        self._forget(ids)

    async def delete(self, token_id: str) -> None:
        redis, _, _ = self._started()
        async with redis.pipeline(transaction=False) as pipe:
            pipe.delete(KEY_PREFIX + token_id)
            pipe.publish(CHANNEL, token_id)
            await self._execute(pipe)
        self._forget([token_id])

    async def replace_all(self, principals: Iterable[Principal]) -> None:
        records = {KEY_PREFIX + new.token_id: principal_record.encode(new) for new in principals}
        redis, _, _ = self._started()
        try:
            stale = [
                key async for key in redis.scan_iter(match=KEY_PREFIX + "*", count=_SCAN_COUNT)
                if key.decode() not in records
            ]
        except redisio.Error as error:
            raise _cache_down(error) from error
        async with redis.pipeline(transaction=False) as pipe:
            for key in stale:
                pipe.delete(key)
            for key, record in records.items():
                pipe.set(key, record)
            pipe.publish(CHANNEL, _EVERYTHING)
            await self._execute(pipe)
        self._forget([_EVERYTHING])

    def _started(self) -> tuple[redisio.Redis, redisio.Script, redisio.Script]:
        """The client, and the scripts ``put.lua`` and ``fill.lua`` on it."""
        if self._redis is None or self._put is None or self._fill_script is None:
            raise RuntimeError("the principal cache is not started: call `await start()` first")
        return self._redis, self._put, self._fill_script

    async def _execute(self, pipe: redisio.Pipeline) -> None:
        try:
            await pipe.execute()
        except redisio.Error as error:
            self._cache.failed(error)
            raise _cache_down(error) from error
        self._cache.recovered()

    def _forget(self, token_ids: Sequence[str]) -> None:
        self._invalidations += 1
        if _EVERYTHING in token_ids:
            self._local.clear()
        for token_id in token_ids:
            self._local.forget(token_id)

    def _invalidated(self, data: bytes) -> None:
        """An invalidation came: drop the local copies of the tokens it names."""
        self._forget(data.decode(errors="replace").split())


def _cache_down(error: redisio.Error) -> StoreUnavailable:
    return StoreUnavailable(f"the principal cache (Redis) is unavailable: {error}")


def _decode(raw: bytes) -> Principal | None:
    try:
        return principal_record.decode(raw)
    except msgspec.DecodeError as error:
        logger.warning("unreadable principal in Redis (%s): run `uplion admin cache rebuild`",
                       error)
        return None
