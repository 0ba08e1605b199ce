"""Stream entries and the claim cursor: delivery counts, trimmed entries, a missing group."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from uplion import redisio

pytestmark = pytest.mark.redis

STREAM, GROUP = "uplion:test", "readers"


@pytest_asyncio.fixture(loop_scope="function")
async def client(clean_redis: str) -> AsyncIterator[redisio.Redis]:
    made = redisio.client(clean_redis)
    yield made
    await made.aclose()


async def read_new(client: redisio.Redis, consumer: str) -> list[redisio.Entry]:
    reply = await client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=10)
    return redisio.entries(reply)


async def test_entries_of_a_read(client: redisio.Redis) -> None:
    first = redisio.text(await client.xadd(STREAM, {"t": "a", "x": "1"}))
    await redisio.create_group(client, STREAM, GROUP)
    await redisio.create_group(client, STREAM, GROUP)  # exists already: nothing happens
    [entry] = await read_new(client, "c1")
    assert entry == redisio.Entry(first, {b"t": b"a", b"x": b"1"}, 1)
    assert (entry.field(b"t"), entry.field(b"none")) == (b"a", None)
    assert redisio.entries(None) == []


async def test_the_cursor_claims_idle_entries_with_their_delivery_counts(
    client: redisio.Redis,
) -> None:
    await redisio.create_group(client, STREAM, GROUP)
    ids = [redisio.text(await client.xadd(STREAM, {"t": str(i)})) for i in range(3)]
    assert [e.id for e in await read_new(client, "dead")] == ids
    await client.xdel(STREAM, ids[1])  # trimmed away before anyone answered it
    cursor = redisio.ClaimCursor(STREAM, GROUP, "alive", idle_s=0.05)
    assert cursor.due()
    await asyncio.sleep(0.06)
    claimed = await cursor.claim(client, 10)
    assert [(e.id, e.field(b"t"), e.deliveries) for e in claimed.entries] == [
        (ids[0], b"0", 2), (ids[2], b"2", 2)]
    assert claimed.trimmed == 1
    assert not cursor.due()  # the whole pending list was scanned: next time in half a timeout
    other = redisio.ClaimCursor(STREAM, GROUP, "third", idle_s=0.05)
    await asyncio.sleep(0.06)
    assert [e.deliveries for e in (await other.claim(client, 1)).entries] == [3]
    assert other.due()  # a partial scan goes on at once


async def test_the_cursor_creates_a_missing_group(client: redisio.Redis) -> None:
    cursor = redisio.ClaimCursor(STREAM, GROUP, "c1", idle_s=1)
    assert (await cursor.claim(client, 10)) == redisio.Claimed((), 0)
    assert [g["name"] for g in await client.xinfo_groups(STREAM)] == [GROUP.encode()]
    with pytest.raises(ValueError, match="must be positive"):
        redisio.ClaimCursor(STREAM, GROUP, "c1", idle_s=0)
