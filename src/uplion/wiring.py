"""The composition root: from settings to the concrete broker, stores, caches and limits.

With a Redis URL (``UPLION_REDIS_URL``, or the broker's when it is Redis) the principal cache,
rate limits, quotas and the usage stream live in Redis, shared by every gateway; without one they
live in the process (one machine). Accounts and billing use the database of
``UPLION_DATABASE_URL`` (SQLite under ``UPLION_DATA_DIR`` by default).

In-process state is right for ``uplion run`` only: beside other replicas, a gateway would keep
its own principal cache (a token revoked elsewhere stays valid here), its own limits and quotas
(multiplied by the replica count) and its own usage (never billed). ``require_shared_state`` is
the check ``uplion gateway`` makes before it starts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from uplion import billing, broker, config
from uplion.accounts import (
    AccountService,
    Database,
    MemoryPrincipalCache,
    PrincipalCache,
    RedisPrincipalCache,
    default_url,
    migrate,
    principal_loader,
)
from uplion.gateway.admission import Admission, MemoryAdmission, RedisAdmission

log = logging.getLogger(__name__)


@dataclass
class Backends:
    broker: broker.Broker
    database: Database
    database_url: str
    principals: PrincipalCache
    admission: Admission
    usage: billing.UsageStream
    accounts: AccountService

    @contextlib.asynccontextmanager
    async def running(self, *, migrate_first: bool) -> AsyncIterator[None]:
        """Start everything (migrating the database first if asked); close it all on exit."""
        if migrate_first:
            await migrate(self.database_url)
        async with contextlib.AsyncExitStack() as stack:
            await self.broker.start()
            stack.push_async_callback(self.broker.close)
            await self.database.start()
            stack.push_async_callback(self.database.close)
            await self.principals.start()
            stack.push_async_callback(self.principals.close)
            await self.admission.start()
            stack.push_async_callback(self.admission.close)
            stack.push_async_callback(self.usage.close)
            yield


class SharedStateMissing(Exception):
    """A gateway that may have other replicas has no Redis to share its state through."""


def require_shared_state(settings: config.Settings) -> None:
    """``SharedStateMissing`` when no Redis is configured and the gateway is not told it runs
    alone (``UPLION_SINGLE_REPLICA``)."""
    if settings.shared_redis_url() is not None or settings.single_replica:
        return
    cluster = (" and manages AIModels (UPLION_DEPLOYMENTS=kubernetes)"
               if settings.deployments == "kubernetes" else "")
    raise SharedStateMissing(
        f"this gateway has no Redis{cluster}: its principal cache, rate limits, quotas and usage "
        "would live in this process, so with more than one replica limits multiply, revoked "
        "tokens stay valid on the other replicas and usage is never billed. Set "
        "UPLION_REDIS_URL (or a redis:// UPLION_BROKER_URL), or UPLION_SINGLE_REPLICA=true if "
        "this gateway runs alone (on one machine, `uplion run` needs neither)."
    )


def backends(settings: config.Settings) -> Backends:
    redis_url = settings.shared_redis_url()
    database_url = settings.database_url or default_url()
    database = Database(database_url)
    principals: PrincipalCache
    admission: Admission
    if redis_url is None:
        principals = MemoryPrincipalCache(principal_loader(database))
        admission = MemoryAdmission(auth_failures_per_minute=settings.auth_failures_per_minute)
        usage = billing.connect("memory://")
    else:
        plain_url, _ = config.split_redis_url(redis_url)  # cache and limits take no options
        principals = RedisPrincipalCache(plain_url, principal_loader(database))
        admission = RedisAdmission(
            plain_url, auth_failures_per_minute=settings.auth_failures_per_minute)
        usage = billing.connect(redis_url)
    return Backends(
        broker=broker.connect(settings.broker_url), database=database,
        database_url=database_url, principals=principals, admission=admission, usage=usage,
        accounts=AccountService(database, principals),
    )
