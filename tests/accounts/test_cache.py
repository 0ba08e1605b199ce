"""The principal caches, in memory and on Redis, over a fake database loader."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
import redis.asyncio

from uplion.accounts import cache, principal
from uplion.accounts.principal import Principal, RateLimits

MakeCache = Callable[..., Awaitable[cache.PrincipalCache]]


class FakeStore:
    """A loader over a dict: it counts its calls, can wait at a gate, and can go down."""

    def __init__(self) -> None:
        self.records: dict[str, Principal] = {}
        self.calls = 0
        self.down = False
        self.gate: asyncio.Event | None = None

    async def load(self, token_id: str) -> Principal | None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ConnectionRefusedError("the database is down")
        return self.records.get(token_id)

    def add(self, token_id: str, **fields: object) -> Principal:
        record = make_principal(token_id, **fields)
        self.records[token_id] = record
        return record


def make_principal(token_id: str, **fields: object) -> Principal:
    values: dict[str, object] = {
        "token_id": token_id, "token_hash": "0" * 64, "user_id": "u_1", "user_name": "alice",
        "role": "member", **fields,
    }
    return Principal(**values)  # type: ignore[arg-type]


@pytest_asyncio.fixture(
    loop_scope="function", params=["memory", pytest.param("redis", marks=pytest.mark.redis)]
)
async def make_cache(request: pytest.FixtureRequest) -> AsyncIterator[MakeCache]:
    """Started caches of one kind (on Redis: all on the test's emptied Redis), closed at the end."""
    made: list[cache.PrincipalCache] = []

    async def make(store: FakeStore, ttl_s: float = 60.0) -> cache.PrincipalCache:
        instance: cache.PrincipalCache
        if request.param == "memory":
            instance = cache.MemoryPrincipalCache(store.load, negative_ttl_s=ttl_s)
        else:
            redis_url = request.getfixturevalue("clean_redis")
            instance = cache.RedisPrincipalCache(redis_url, store.load, local_ttl_s=ttl_s,
                                                 negative_ttl_s=ttl_s)
        await instance.start()
        made.append(instance)
        return instance

    yield make
    for instance in made:
        await instance.close()



async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 1.0) -> float:
    """Seconds until ``check()`` holds; fails after ``within_s``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within_s:
            pytest.fail(f"not within {within_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_a_miss_loads_once_then_the_cache_answers(make_cache: MakeCache) -> None:
    store = FakeStore()
    record = store.add("t1")
    principals = await make_cache(store)
    assert await principals.get("t1") == record
    assert await principals.get("t1") == record
    assert store.calls == 1


async def test_concurrent_misses_share_one_load(make_cache: MakeCache) -> None:
    store = FakeStore()
    record = store.add("t1")
    store.gate = asyncio.Event()
    principals = await make_cache(store)
    waiting = [asyncio.create_task(principals.get("t1")) for _ in range(20)]
    await asyncio.sleep(0.05)
    store.gate.set()
    assert await asyncio.gather(*waiting) == [record] * 20
    assert store.calls == 1


async def test_unknown_tokens_are_remembered_for_a_few_seconds(make_cache: MakeCache) -> None:
    store = FakeStore()
    principals = await make_cache(store, ttl_s=0.2)
    assert await principals.get("nope") is None
    assert await principals.get("nope") is None
    assert store.calls == 1
    await asyncio.sleep(0.25)
    store.add("nope")
    assert await principals.get("nope") is not None
    assert store.calls == 2


async def test_a_down_database_fails_only_uncached_tokens(make_cache: MakeCache) -> None:
    store = FakeStore()
    record = store.add("t1")
    store.add("t2")
    principals = await make_cache(store)
    assert await principals.get("t1") == record
    store.down = True
    assert await principals.get("t1") == record
    with pytest.raises(cache.StoreUnavailable):
        await principals.get("t2")
    store.down = False
    assert await principals.get("t2") is not None


async def test_written_principals_are_served_without_the_database(make_cache: MakeCache) -> None:
    store = FakeStore()
    principals = await make_cache(store)
    first, second = make_principal("t1"), make_principal("t2", role="admin")
    await principals.put(first)
    await principals.put_many([second])
    assert await principals.get("t1") == first
    assert await principals.get("t2") == second
    changed = make_principal("t1", user_limits=RateLimits(requests_per_minute=1))
    await principals.put(changed)
    assert await principals.get("t1") == changed
    assert store.calls == 0
    await principals.delete("t1")
    assert await principals.get("t1") is None
    assert store.calls == 1


async def test_a_revocation_is_final(make_cache: MakeCache) -> None:
    store = FakeStore()
    principals = await make_cache(store)
    await principals.put(make_principal("t1", revoked=True))
    await principals.put(make_principal("t1", user_name="late"))
    found = await principals.get("t1")
    assert found is not None
    assert found.revoked


async def test_a_fill_racing_a_revocation_does_not_bring_the_token_back(
    make_cache: MakeCache,
) -> None:
    store = FakeStore()
    store.add("t1")  # what the slow load read, before the revocation committed
    store.gate = asyncio.Event()
    principals = await make_cache(store)
    loading = asyncio.create_task(principals.get("t1"))
    await asyncio.sleep(0.05)
    await principals.put(make_principal("t1", revoked=True))
    store.gate.set()
    await loading
    found = await principals.get("t1")
    assert found is not None
    assert found.revoked


async def test_replace_all_holds_exactly_the_given_principals(make_cache: MakeCache) -> None:
    store = FakeStore()
    principals = await make_cache(store)
    await principals.put_many([make_principal("old"), make_principal("kept")])
    kept = make_principal("kept", user_name="renamed")
    await principals.replace_all([kept, make_principal("new")])
    assert await principals.get("kept") == kept
    assert await principals.get("new") == make_principal("new")
    assert store.calls == 0
    assert await principals.get("old") is None
    assert store.calls == 1


@pytest.mark.redis
async def test_redis_holds_records_without_ttl_shared_by_instances(
    clean_redis: str, raw: redis.asyncio.Redis
) -> None:
    store, other_store = FakeStore(), FakeStore()
    record = store.add("t1")
    first = cache.RedisPrincipalCache(clean_redis, store.load)
    second = cache.RedisPrincipalCache(clean_redis, other_store.load)
    await first.start()
    await second.start()
    try:
        assert await first.get("t1") == record
        stored = await raw.get("uplion:principal:t1")
        assert isinstance(stored, bytes)
        assert principal.decode(stored) == record
        assert await raw.ttl("uplion:principal:t1") == -1
        assert await second.get("t1") == record
        assert other_store.calls == 0
    finally:
        await first.close()
        await second.close()


@pytest.mark.redis
async def test_a_change_reaches_every_instance_within_a_second(clean_redis: str) -> None:
    store = FakeStore()
    store.add("t1")
    writer = cache.RedisPrincipalCache(clean_redis, store.load, local_ttl_s=60)
    reader = cache.RedisPrincipalCache(clean_redis, store.load, local_ttl_s=60)
    await writer.start()
    await reader.start()

    async def revoked() -> bool:
        found = await reader.get("t1")
        return found is not None and found.revoked

    try:
        assert not await revoked()  # now in the reader's local map for a minute
        await writer.put(make_principal("t1", revoked=True))
        assert await eventually(revoked) < 1.0
    finally:
        await writer.close()
        await reader.close()


@pytest.mark.redis
async def test_invalidations_survive_a_lost_subscription(
    clean_redis: str, raw: redis.asyncio.Redis
) -> None:
    store = FakeStore()
    store.add("t1")
    writer = cache.RedisPrincipalCache(clean_redis, store.load, local_ttl_s=60)
    reader = cache.RedisPrincipalCache(clean_redis, store.load, local_ttl_s=60)
    await writer.start()
    await reader.start()

    async def named(name: str) -> bool:
        found = await reader.get("t1")
        return found is not None and found.user_name == name

    try:
        assert await named("alice")
        assert await raw.client_kill_filter(_type="pubsub") == 2
        await writer.put(make_principal("t1", user_name="bob"))
        await eventually(lambda: named("bob"))
        await writer.put(make_principal("t1", user_name="carol"))  # the new subscription works
        assert await eventually(lambda: named("carol")) < 1.0
    finally:
        await writer.close()
        await reader.close()


@pytest.mark.redis
async def test_unreadable_records_are_read_from_the_database(
    clean_redis: str, raw: redis.asyncio.Redis
) -> None:
    store = FakeStore()
    record = store.add("t1")
    await raw.set("uplion:principal:t1", b"not json")
    principals = cache.RedisPrincipalCache(clean_redis, store.load)
    await principals.start()
    try:
        assert await principals.get("t1") == record
    finally:
        await principals.close()


@pytest.mark.redis
async def test_an_unknown_token_costs_one_database_query_for_all_gateways(
    clean_redis: str, raw: redis.asyncio.Redis
) -> None:
    stores = [FakeStore() for _ in range(3)]
    gateways = [cache.RedisPrincipalCache(clean_redis, store.load, local_ttl_s=0.01,
                                          negative_ttl_s=60) for store in stores]
    for gateway in gateways:
        await gateway.start()
    try:
        for _ in range(3):  # requests with the same unknown token, spread over the gateways
            for gateway in gateways:
                assert await gateway.get("nope") is None
                await asyncio.sleep(0.02)  # past the local map's TTL: Redis answers
        assert [store.calls for store in stores] == [1, 0, 0]
        assert 0 < await raw.pttl("uplion:principal:nope") <= 60_000

        created = make_principal("nope")  # the token is created after all: the mark goes
        for store in stores:
            store.records["nope"] = created
        await gateways[0].put(created)
        assert await raw.pttl("uplion:principal:nope") == -1
        for gateway in gateways:
            assert await gateway.get("nope") == created
        assert [store.calls for store in stores] == [1, 0, 0]
    finally:
        for gateway in gateways:
            await gateway.close()


@pytest.mark.redis
async def test_a_token_created_while_marked_unknown_is_filled_from_the_database(
    clean_redis: str, raw: redis.asyncio.Redis
) -> None:
    store = FakeStore()
    principals = cache.RedisPrincipalCache(clean_redis, store.load, local_ttl_s=0.01,
                                           negative_ttl_s=0.05)
    await principals.start()
    try:
        assert await principals.get("late") is None
        record = store.add("late")  # created, and the write-through to the cache was lost
        await asyncio.sleep(0.06)  # the mark expires: the database is asked again
        assert await principals.get("late") == record
        stored = await raw.get("uplion:principal:late")
        assert isinstance(stored, bytes)
        assert principal.decode(stored) == record
        assert store.calls == 2
    finally:
        await principals.close()
