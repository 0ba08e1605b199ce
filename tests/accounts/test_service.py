"""The account service: admin changes reach the cache; the cache serves while PostgreSQL is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
import redis.asyncio

from tests.stores import PostgresServer
from uplion.accounts import cache, db, service, tokens
from uplion.accounts.principal import Principal, Quota, RateLimits
from uplion.accounts.repository import TokenChanges, UserChanges

CACHE_KINDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


class CountingLoader:
    """The service's loader, counting how often the cache had to ask the database."""

    def __init__(self, database: db.Database) -> None:
        self._load = service.principal_loader(database)
        self.calls = 0

    async def __call__(self, token_id: str) -> Principal | None:
        self.calls += 1
        return await self._load(token_id)


class Accounts:
    """A service with its cache and the cache's loader, as one gateway instance holds them."""

    def __init__(self, database: db.Database, kind: str, redis_url: str | None) -> None:
        self.loader = CountingLoader(database)
        self.cache: cache.PrincipalCache = (
            cache.MemoryPrincipalCache(self.loader) if redis_url is None or kind == "memory"
            else cache.RedisPrincipalCache(redis_url, self.loader, local_ttl_s=60)
        )
        self.service = service.AccountService(database, self.cache)


MakeAccounts = Callable[[db.Database], Awaitable[Accounts]]


@pytest_asyncio.fixture(loop_scope="function", params=CACHE_KINDS)
async def make_accounts(request: pytest.FixtureRequest) -> AsyncIterator[MakeAccounts]:
    """Started services with a cache of one kind (on Redis: the test's emptied Redis)."""
    kind = request.param
    redis_url = request.getfixturevalue("clean_redis") if kind == "redis" else None
    made: list[Accounts] = []

    async def make(database: db.Database) -> Accounts:
        accounts = Accounts(database, kind, redis_url)
        await accounts.cache.start()
        made.append(accounts)
        return accounts

    yield make
    for accounts in made:
        await accounts.cache.close()


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 1.0) -> float:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within_s:
            pytest.fail(f"not within {within_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def admitted(accounts: Accounts, full_token: str) -> Principal | None:
    """What the gateway does: parse, read the cache, compare the secret, check the state."""
    parsed = tokens.parse(full_token)
    assert parsed is not None
    token_id, secret = parsed
    found = await accounts.cache.get(token_id)
    if found is None or not tokens.verify(secret, found) or found.revoked or found.expired():
        return None
    return found if found.user_active else None


async def test_bootstrap_creates_the_first_admin_once(
    database: db.Database, make_accounts: MakeAccounts
) -> None:
    accounts = await make_accounts(database)
    full_token = await accounts.service.bootstrap_admin()
    assert full_token is not None
    assert await accounts.service.bootstrap_admin() is None
    caller = await admitted(accounts, full_token)
    assert caller is not None
    assert (caller.user_name, caller.role) == ("admin", "admin")
    assert accounts.loader.calls == 0
    assert [user.name for user in await accounts.service.list_users()] == ["admin"]


async def test_admin_changes_write_through_to_the_cache(
    database: db.Database, make_accounts: MakeAccounts
) -> None:
    accounts = await make_accounts(database)
    admin = accounts.service
    alice = await admin.create_user("alice", allowed_models=["a", "b"])
    laptop = await admin.create_token(alice.id, "laptop", limits=RateLimits(10, 1000))
    phone = await admin.create_token(alice.id, "phone", allowed_models=["b", "c"])
    assert laptop.token is not None
    assert phone.token is not None
    assert (await admitted(accounts, laptop.token)) == await accounts.cache.get(laptop.id)

    await admin.update_user(alice.id, UserChanges(quota=Quota(500, "day"), allowed_models=None))
    for token_id in (laptop.id, phone.id):
        found = await accounts.cache.get(token_id)
        assert found is not None
        assert found.user_quota == Quota(500, "day")
    phone_principal = await accounts.cache.get(phone.id)
    assert phone_principal is not None
    assert phone_principal.allowed_models == ["b", "c"]

    await admin.update_token(laptop.id, TokenChanges(limits=RateLimits(requests_per_minute=1)))
    laptop_principal = await accounts.cache.get(laptop.id)
    assert laptop_principal is not None
    assert laptop_principal.token_limits == RateLimits(requests_per_minute=1)

    await admin.update_user(alice.id, UserChanges(active=False))
    assert await admitted(accounts, phone.token) is None
    await admin.update_user(alice.id, UserChanges(active=True))
    assert await admitted(accounts, phone.token) is not None

    await admin.revoke_token(phone.id)
    assert await admitted(accounts, phone.token) is None
    assert await admitted(accounts, laptop.token) is not None
    assert accounts.loader.calls == 0
    assert [token.revoked_at is not None for token in await admin.list_tokens(alice.id)] == [
        False, True,
    ]


@pytest.mark.redis
async def test_a_revocation_reaches_another_instance_within_a_second(
    database: db.Database, clean_redis: str
) -> None:
    here = Accounts(database, "redis", clean_redis)
    there = Accounts(database, "redis", clean_redis)
    await here.cache.start()
    await there.cache.start()
    try:
        alice = await here.service.create_user("alice")
        created = await here.service.create_token(alice.id, "laptop")
        assert created.token is not None
        full_token = created.token
        assert await admitted(there, full_token) is not None  # cached there for a minute

        async def refused_there() -> bool:
            return await admitted(there, full_token) is None

        await here.service.revoke_token(created.id)
        assert await eventually(refused_there) < 1.0
        assert there.loader.calls == 0
    finally:
        await here.cache.close()
        await there.cache.close()


@pytest.mark.redis
async def test_rebuild_reloads_every_principal(
    database: db.Database, clean_redis: str
) -> None:
    accounts = Accounts(database, "redis", clean_redis)
    await accounts.cache.start()
    raw: redis.asyncio.Redis = redis.asyncio.Redis.from_url(clean_redis)
    try:
        alice = await accounts.service.create_user("alice")
        kept = await accounts.service.create_token(alice.id, "kept")
        revoked = await accounts.service.create_token(alice.id, "revoked")
        await accounts.service.revoke_token(revoked.id)
        await raw.delete(f"uplion:principal:{kept.id}")
        await raw.set("uplion:principal:0123456789ab", b"a token the database no longer has")
        assert await accounts.service.rebuild_cache() == 2
        keys = sorted(key.decode() if isinstance(key, bytes) else key
                      for key in await raw.keys("uplion:principal:*"))
        assert keys == sorted(f"uplion:principal:{token.id}" for token in (kept, revoked))
    finally:
        await raw.aclose()
        await accounts.cache.close()


@pytest.mark.parametrize("kind", CACHE_KINDS)
async def test_cached_tokens_pass_while_postgresql_is_stopped(
    stoppable_postgres: PostgresServer, request: pytest.FixtureRequest, kind: str
) -> None:
    redis_url = request.getfixturevalue("clean_redis") if kind == "redis" else None
    url = stoppable_postgres.create_database()
    await db.migrate(url)
    database = db.Database(url)
    await database.start()
    accounts = Accounts(database, kind, redis_url)
    await accounts.cache.start()
    try:
        alice = await accounts.service.create_user("alice")
        cached = await accounts.service.create_token(alice.id, "cached")
        revoked = await accounts.service.create_token(alice.id, "revoked")
        uncached = await accounts.service.create_token(alice.id, "uncached")
        assert cached.token is not None
        assert revoked.token is not None
        assert uncached.token is not None
        await accounts.service.revoke_token(revoked.id)
        await accounts.cache.delete(uncached.id)

        stoppable_postgres.stop()
        caller = await admitted(accounts, cached.token)
        assert caller is not None
        assert caller.user_name == "alice"
        refused = await accounts.cache.get(revoked.id)
        assert refused is not None
        assert refused.revoked
        assert await admitted(accounts, revoked.token) is None
        with pytest.raises(cache.StoreUnavailable):
            await accounts.cache.get(uncached.id)
        if kind == "redis":  # a gateway (re)started during the outage reads Redis
            restarted = Accounts(database, kind, redis_url)
            await restarted.cache.start()
            try:
                assert await admitted(restarted, cached.token) is not None
                assert await admitted(restarted, revoked.token) is None
            finally:
                await restarted.cache.close()

        stoppable_postgres.start()
        assert await admitted(accounts, uncached.token) is not None
    finally:
        await accounts.cache.close()
        await database.close()
