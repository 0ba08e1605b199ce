"""Replies: chunks sent to a gateway's stream, read by that gateway alone, through outages.

``uplion:reply:<address>`` is a stream per gateway, one entry per chunk (field ``c``), read with
XREAD BLOCK by a task of its own from the position it has reached (``after``). It expires
``reply_ttl_s`` after the last chunk, so the stream of a gateway that died disappears on its own.

Bounded without dropping a live request's chunks: nothing is trimmed by count. Writers trim by
age (``MINID ~ <now - task_ttl_s>``: older chunks belong to requests past their deadline, as
for topics), and the reader trims what it has read (``XTRIM MINID ~ <after>``, at most once a
``_TRIM_EVERY_S``), so the stream holds little more than what its gateway has not read yet.

Outages: a failed read is retried with backoff from the same position, so chunks sent while the
reader could not reach Redis are delivered once it can, as long as Redis kept them. Whether it
did is checked (Redis's epoch, ``links.Lifetime.check_epoch``) when the reader starts, and then
after a read at most every ``_EPOCH_CHECK_EVERY_S`` (so within a read's block when idle: a
restart may never surface as an error here, the client reconnecting by itself): a Redis that
came back empty lost the chunks and the tasks of this gateway's requests, which the broker
reports (``Broker.on_data_lost``).
"""

from __future__ import annotations

import logging

import msgspec

from uplion import protocol, redisio
from uplion.broker import base
from uplion.broker.redis_streams import keys, links

logger = logging.getLogger(__name__)

_BATCH = 512
_BLOCK_MS = 5_000
_TRIM_EVERY_S = 1.0
_EPOCH_CHECK_EVERY_S = 1.0


class Replies:
    """The reply streams: sending chunks, and following this process's addresses."""

    def __init__(self, lifetime: links.Lifetime) -> None:
        self._lifetime = lifetime
        self._handlers: dict[str, base.ChunkHandler] = {}

    def clear(self) -> None:
        self._handlers.clear()

    async def send(self, address: str, chunk: protocol.Chunk) -> None:
        settings = self._lifetime.settings
        key = keys.REPLY_PREFIX + address
        with links.unavailable(f"send a reply of task {chunk.task_id} to {address}"):
            async with self._lifetime.open().redis.pipeline(transaction=False) as pipe:
                pipe.xadd(key, {keys.CHUNK_FIELD: protocol.encode(chunk)},
                          minid=settings.min_id(), approximate=True)
                pipe.pexpire(key, settings.reply_ttl_ms)
                await pipe.execute()

    async def subscribe(self, address: str, handler: base.ChunkHandler) -> None:
        """Deliver the chunks sent to ``address`` from now on (a second call replaces handler)."""
        connections = self._lifetime.open()
        reading = address in self._handlers
        self._handlers[address] = handler
        if reading:
            return
        key = keys.REPLY_PREFIX + address
        try:
            with links.unavailable(f"find the end of the replies to {address}"):
                last = await connections.redis.xrevrange(key, count=1)
                await self._lifetime.check_epoch(connections.redis)
        except BaseException:
            del self._handlers[address]
            raise
        after = redisio.text(last[0][0]) if last and last[0][0] is not None else "0-0"
        connections.spawn(self._read(connections, address, key, after),
                          name=f"uplion-replies-{address}")

    async def _read(self, connections: links.Links, address: str, key: str, after: str) -> None:
        client = connections.reader()
        backoff = redisio.Backoff()
        next_trim = 0.0
        next_epoch_check = connections.loop.time() + _EPOCH_CHECK_EVERY_S
        failing = False
        try:
            while True:
                try:
                    response = await client.xread({key: after}, count=_BATCH, block=_BLOCK_MS)
                except redisio.Error as error:
                    if not failing:
                        logger.warning("reading the replies to %s failed (%s: %s); retrying "
                                       "with backoff", address, type(error).__name__, error)
                    failing = True
                    await backoff.wait()
                    continue
                if failing:
                    logger.info("reading the replies to %s again", address)
                failing = False
                backoff.reset()
                if connections.loop.time() >= next_epoch_check:
                    next_epoch_check = connections.loop.time() + _EPOCH_CHECK_EVERY_S
                    await self._check_epoch(connections)
                read = redisio.entries(response)
                for entry in read:
                    after = entry.id
                    self._deliver(address, entry)
                if read and connections.loop.time() >= next_trim:
                    next_trim = connections.loop.time() + _TRIM_EVERY_S
                    await _trim(connections.redis, key, after)
        finally:
            await connections.close_reader(client)

    async def _check_epoch(self, connections: links.Links) -> None:
        try:
            await self._lifetime.check_epoch(connections.redis)
        except redisio.Error as error:  # the next publish or recovery checks again
            logger.warning("could not check whether Redis kept its data: %s", error)

    def _deliver(self, address: str, entry: redisio.Entry) -> None:
        handler = self._handlers.get(address)
        if handler is None:
            return
        raw = entry.field(keys.CHUNK_FIELD)
        if raw is None:
            logger.warning("reply entry %s of %s has no chunk: skipped", entry.id, address)
            return
        try:
            chunk = protocol.decode_chunk(raw)
        except msgspec.DecodeError as error:
            logger.warning("reply entry %s of %s is not a chunk (%s): skipped",
                           entry.id, address, error)
            return
        try:
            handler(chunk)
        except Exception:
            logger.exception("the reply handler of %s failed on a chunk of task %s",
                             address, chunk.task_id)


async def _trim(redis: redisio.Redis, key: str, read_up_to: str) -> None:
    """Drop the entries before ``read_up_to`` (whole stream nodes only: cheap); a failure
    only leaves them to the next trim."""
    try:
        await redis.xtrim(key, minid=read_up_to, approximate=True)
    except redisio.Error as error:
        logger.debug("trimming %s failed: %s", key, error)
