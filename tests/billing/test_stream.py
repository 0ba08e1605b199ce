"""The usage stream: emit never fails the request path, reads are acked, unacked ones come back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
import pytest_asyncio
import redis.asyncio

from tests.redisio import waiting
from tests.redisio.server import RedisProcess
from uplion import redisio
from uplion.billing import events, stream


def make_event(index: int, at: float | None = None) -> events.UsageEvent:
    return events.UsageEvent(
        event_id=f"e{index}", token_id="t1", user_id="u1", model="m", version="1",
        prompt_tokens=index, completion_tokens=1, latency_ms=5, status=200,
        at=time.time() if at is None else at,
    )


async def read_all(usage: stream.UsageStream, count: int) -> list[stream.Entry]:
    """Read until ``count`` entries came (a test bug if they never do)."""
    read: list[stream.Entry] = []
    async with asyncio.timeout(5):
        while len(read) < count:
            read += await usage.read(count - len(read), block_ms=200)
    return read


def test_events_round_trip_and_bounds() -> None:
    event = make_event(1)
    assert events.decode(events.encode(event)) == event
    assert not event.failed
    fields = msgspec.structs.asdict(event)
    for name, value in (("prompt_tokens", -1), ("event_id", ""), ("model", "m" * 65)):
        with pytest.raises(msgspec.ValidationError):
            events.decode(msgspec.json.encode({**fields, name: value}))


# -- memory


async def test_memory_reads_acks_and_redelivers_unacked() -> None:
    usage = stream.MemoryUsageStream(visibility_timeout_s=0.2)
    assert await usage.read(10, block_ms=10) == []
    for index in range(3):
        usage.emit(make_event(index))
    first = await usage.read(2, block_ms=0)
    assert [event.event_id for _, event in first] == ["e0", "e1"]
    second = await usage.read(10, block_ms=0)
    assert [event.event_id for _, event in second] == ["e2"]
    await usage.ack([entry_id for entry_id, _ in first])
    await asyncio.sleep(0.25)  # e2 read and never acked: its reader died
    assert await usage.read(10, block_ms=0) == second
    await usage.ack([second[0][0]])
    await asyncio.sleep(0.25)
    assert await usage.read(10, block_ms=0) == []
    await usage.close()


async def test_memory_read_wakes_on_emit() -> None:
    usage = stream.MemoryUsageStream()
    reading = asyncio.create_task(usage.read(10, block_ms=5_000))
    await asyncio.sleep(0.01)
    usage.emit(make_event(1))
    async with asyncio.timeout(1):
        [(_, event)] = await reading
    assert event.event_id == "e1"
    await usage.close()


async def test_memory_drops_when_full_or_closed_without_raising() -> None:
    usage = stream.MemoryUsageStream(max_buffer=2)
    for index in range(3):
        usage.emit(make_event(index))
    assert usage.dropped == 1
    await usage.close()
    usage.emit(make_event(9))
    assert usage.dropped == 2


def test_connect_picks_by_scheme() -> None:
    assert isinstance(stream.connect("memory://"), stream.MemoryUsageStream)
    redis_stream = stream.connect("redis://127.0.0.1:1/0?visibility_timeout_s=3&retention_s=60")
    assert isinstance(redis_stream, stream.RedisUsageStream)
    assert (redis_stream.visibility_timeout_s, redis_stream.retention_s) == (3, 60)
    assert redis_stream._url == "redis://127.0.0.1:1/0"
    shared = stream.connect("redis://h/0?task_ttl_s=60&visibility_timeout_s=9&reply_ttl_s=5&db=1")
    assert isinstance(shared, stream.RedisUsageStream)  # the broker's URL, with its options
    assert (shared._url, shared.visibility_timeout_s) == ("redis://h/0?db=1", 9)
    with pytest.raises(ValueError, match="scheme"):
        stream.connect("kafka://x")
    with pytest.raises(ValueError, match="not a number"):
        stream.connect("redis://x?retention_s=long")


# -- Redis

MakeStream = Callable[..., Awaitable[stream.RedisUsageStream]]


@pytest_asyncio.fixture(loop_scope="function")
async def make_stream(clean_redis: str) -> AsyncIterator[MakeStream]:
    """Redis usage streams on the test's Redis (each one a process), closed at the end."""
    made: list[stream.RedisUsageStream] = []

    async def make(**options: Any) -> stream.RedisUsageStream:
        instance = stream.RedisUsageStream(clean_redis, **options)
        made.append(instance)
        return instance

    yield make
    for instance in made:
        await instance.close()



async def pending(raw: redis.asyncio.Redis) -> dict[str, str]:
    """Entry id -> consumer, for every entry pending in the billing group."""
    entries = await raw.xpending_range(stream.STREAM, stream.GROUP, min="-", max="+", count=1000)
    return {cast(bytes, entry["message_id"]).decode(): cast(bytes, entry["consumer"]).decode()
            for entry in entries}


@pytest.mark.redis
async def test_redis_emits_in_pipelines_and_reads_in_order(
    make_stream: MakeStream, raw: redis.asyncio.Redis
) -> None:
    gateway = await make_stream(batch_size=100)
    aggregator = await make_stream(consumer="agg")
    assert await aggregator.read(10, block_ms=10) == []  # creates the group
    for index in range(1_000):
        gateway.emit(make_event(index))
    entries = await read_all(aggregator, 1_000)
    assert [event.prompt_tokens for _, event in entries] == list(range(1_000))
    assert set((await pending(raw)).values()) == {"agg"}
    await aggregator.ack([entry_id for entry_id, _ in entries])
    assert await pending(raw) == {}
    assert gateway.dropped == 0


@pytest.mark.redis
async def test_redis_close_sends_what_is_buffered(
    make_stream: MakeStream, raw: redis.asyncio.Redis
) -> None:
    gateway = await make_stream(linger_s=10)  # the sender would wait: close must not
    for index in range(50):
        gateway.emit(make_event(index))
    await gateway.close()
    assert await raw.xlen(stream.STREAM) == 50
    gateway.emit(make_event(99))  # after close: counted, never raised
    assert gateway.dropped == 1


@pytest.mark.redis
async def test_redis_dead_readers_entries_are_claimed_after_the_timeout(
    make_stream: MakeStream, raw: redis.asyncio.Redis
) -> None:
    gateway = await make_stream()
    dying = await make_stream(consumer="dying", visibility_timeout_s=0.5)
    assert await dying.read(10, block_ms=10) == []
    for index in range(5):
        gateway.emit(make_event(index))
    taken = await read_all(dying, 5)
    await dying.ack([taken[0][0]])
    await dying.close()  # dies holding four

    survivor = await make_stream(consumer="survivor", visibility_timeout_s=0.5)
    assert await survivor.read(10, block_ms=100) == []  # not idle long enough yet
    await asyncio.sleep(0.5)
    assert await survivor.read(10, block_ms=100) == taken[1:]
    assert set((await pending(raw)).values()) == {"survivor"}


@pytest.mark.redis
async def test_redis_garbage_entries_are_acked_and_skipped(
    make_stream: MakeStream, raw: redis.asyncio.Redis
) -> None:
    reader = await make_stream(consumer="agg")
    assert await reader.read(10, block_ms=10) == []
    await raw.xadd(stream.STREAM, {"e": b"not json"})
    await raw.xadd(stream.STREAM, {"e": events.encode(make_event(1)).replace(b"m", b"m" * 70)})
    await raw.xadd(stream.STREAM, {"other": b"field"})
    await raw.xadd(stream.STREAM, {"e": events.encode(make_event(2))})
    entries = await reader.read(10, block_ms=100)
    assert [event.event_id for _, event in entries] == ["e2"]
    assert list(await pending(raw)) == [entries[0][0]]


@pytest.mark.redis
async def test_redis_trims_only_entries_older_than_the_retention(
    make_stream: MakeStream, raw: redis.asyncio.Redis
) -> None:
    day_ms = 24 * 3600 * 1000
    old_ms = int(time.time() * 1000) - 2 * day_ms
    for index in range(300):  # three whole radix-tree nodes of two-day-old entries
        await raw.xadd(stream.STREAM, {"e": b"old"}, id=f"{old_ms}-{index}")
    gateway = await make_stream(retention_s=24 * 3600)
    gateway.emit(make_event(1))
    await gateway.close()
    assert await raw.xlen(stream.STREAM) == 1

    await raw.delete(stream.STREAM)
    keeper = await make_stream(retention_s=3 * 24 * 3600)  # the old ones are within it
    for index in range(300):
        await raw.xadd(stream.STREAM, {"e": b"old"}, id=f"{old_ms }-{index}")
    keeper.emit(make_event(2))
    await keeper.close()
    assert await raw.xlen(stream.STREAM) == 301


@pytest.mark.redis
async def test_redis_emit_never_raises_when_redis_is_gone() -> None:
    gateway = stream.RedisUsageStream(
        "redis://127.0.0.1:1/0", max_buffer=10, close_timeout_s=0.2
    )
    for index in range(12):
        gateway.emit(make_event(index))  # no exception into the request path
    assert gateway.dropped == 2  # the buffer is bounded
    await asyncio.sleep(0.05)
    await gateway.close()  # cannot send: counted as dropped, not raised
    assert gateway.dropped == 12


def test_emit_outside_an_event_loop_is_a_counted_drop() -> None:
    gateway = stream.RedisUsageStream("redis://127.0.0.1:1/0")
    gateway.emit(make_event(1))
    assert gateway.dropped == 1


async def test_redis_read_fails_within_the_timeout_when_redis_is_partitioned(
    tmp_path: Path,
) -> None:
    server = RedisProcess(tmp_path)
    aggregator = stream.RedisUsageStream(f"{server.url}?socket_timeout=0.3", consumer="agg")
    gateway = stream.RedisUsageStream(server.url, close_timeout_s=0.5)
    try:
        assert await aggregator.read(10, block_ms=10) == []
        gateway.emit(make_event(1))
        assert [event.event_id for _, event in await read_all(aggregator, 1)] == ["e1"]
        server.freeze()  # a partition: connections stay open, nothing answers
        started = time.monotonic()
        with pytest.raises(redisio.Error):
            async with asyncio.timeout(10):
                await aggregator.read(10, block_ms=200)
        assert time.monotonic() - started < 2.0  # the block and one socket timeout
        gateway.emit(make_event(2))  # the request path never waits on Redis
        server.thaw()
        assert [event.event_id for _, event in await read_all(aggregator, 1)] == ["e2"]
    finally:
        server.thaw()
        await gateway.close()
        await aggregator.close()
        server.stop()


async def test_redis_events_no_aggregator_read_are_sent_again_when_redis_restarts_empty(
    tmp_path: Path,
) -> None:
    """Events Redis took but no aggregator read are kept by the gateway; Redis coming back
    without its data (a new epoch) makes the gateway send them again. Read ones are let go."""
    server = RedisProcess(tmp_path)
    gateway = stream.RedisUsageStream(server.url, confirm_every_s=0.05)
    aggregator = stream.RedisUsageStream(server.url, consumer="agg")
    try:
        assert await aggregator.read(10, block_ms=10) == []  # the group exists from here
        for index in range(3):
            gateway.emit(make_event(index))
        read = await read_all(aggregator, 3)
        await aggregator.ack([entry_id for entry_id, _ in read])
        for index in range(3, 8):  # taken by Redis, never read
            gateway.emit(make_event(index))
        await waiting.until(lambda: _has(server.url, 8))
        server.restart(keep_data=False)
        again = await read_all(aggregator, 5)
        assert sorted(event.event_id for _, event in again) == [f"e{i}" for i in range(3, 8)]
        assert gateway.dropped == 0
    finally:
        await gateway.close()
        await aggregator.close()
        server.stop()


async def test_redis_a_restart_that_keeps_the_data_sends_nothing_again(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path)
    gateway = stream.RedisUsageStream(server.url, confirm_every_s=0.05)
    aggregator = stream.RedisUsageStream(server.url, consumer="agg")
    try:
        assert await aggregator.read(10, block_ms=10) == []
        for index in range(4):
            gateway.emit(make_event(index))
        await waiting.until(lambda: _has(server.url, 4))
        server.restart(keep_data=True)
        gateway.emit(make_event(4))  # its pipeline sees the same epoch
        await waiting.until(lambda: _has(server.url, 5))
        read = await read_all(aggregator, 5)
        assert sorted(event.event_id for _, event in read) == [f"e{i}" for i in range(5)]
        assert await _length(server.url) == 5  # nothing appended twice
    finally:
        await gateway.close()
        await aggregator.close()
        server.stop()


async def _has(url: str, count: int) -> bool:
    return await _length(url) >= count


async def _length(url: str) -> int:
    """The usage stream's length, on a connection of its own (the server may have restarted)."""
    raw = redis.asyncio.Redis.from_url(url)
    try:
        return int(await raw.xlen(stream.STREAM))
    finally:
        await raw.aclose()
