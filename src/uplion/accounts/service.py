"""What the admin API, the CLI and the gateway ask of accounts: the store and the cache together.

Every admin change commits to the database first, then writes the principals it affects through
to the cache (a user's change: every token of the user), so each gateway instance sees it within
a second. Should that write fail, the change is saved but the call raises ``StoreUnavailable``:
repeat it (every change is idempotent) or rebuild the cache. The request path does not come here:
the gateway reads the cache. Wiring::

    db = Database(url)
    cache = MemoryPrincipalCache(principal_loader(db))  # or RedisPrincipalCache(redis_url, ...)
    accounts = AccountService(db, cache)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from uplion.accounts import cache as principal_cache
from uplion.accounts.db import Database
from uplion.accounts.principal import Principal, Quota, RateLimits, Role
from uplion.accounts.repository import (
    NO_LIMITS,
    Conflict,
    Repository,
    TokenChanges,
    TokenView,
    UserChanges,
    UserView,
)

logger = logging.getLogger(__name__)

BOOTSTRAP_ADMIN = "admin"


def principal_loader(db: Database) -> principal_cache.Loader:
    """The cache's loader: one principal read from ``db`` (``None`` for an unknown token)."""

    async def load(token_id: str) -> Principal | None:
        async with db.session() as session:
            return await Repository(session).principal_for(token_id)

    return load


class AccountService:
    """Users and tokens for the admin API and the CLI."""

    def __init__(self, db: Database, cache: principal_cache.PrincipalCache) -> None:
        self._db = db
        self._cache = cache

    async def bootstrap_admin(self) -> str | None:
        """On an empty store: the user ``admin`` and its first token (the full token, shown once).

        ``None`` when users exist already (or another instance bootstrapped at the same time).
        """
        try:
            async with self._db.session() as session:
                repo = Repository(session)
                if await repo.count_users():
                    return None
                admin = await repo.create_user(BOOTSTRAP_ADMIN, "admin")
                created = await repo.create_token(admin.id, "bootstrap")
                principals = await repo.principals_of_user(admin.id)
        except Conflict:
            return None
        await self._cache.put_many(principals)
        logger.info("created the first admin user %r and its token %s", BOOTSTRAP_ADMIN, created.id)
        return created.token

    async def create_user(
        self,
        name: str,
        role: Role = "member",
        *,
        allowed_models: Sequence[str] | None = None,
        limits: RateLimits = NO_LIMITS,
        quota: Quota | None = None,
    ) -> UserView:
        async with self._db.session() as session:
            user = await Repository(session).create_user(
                name, role, allowed_models=allowed_models, limits=limits, quota=quota
            )
        logger.info("created user %s (%r, %s)", user.id, user.name, user.role)
        return user

    async def list_users(self) -> list[UserView]:
        async with self._db.session() as session:
            return await Repository(session).list_users()

    async def get_user(self, user_id: str) -> UserView:
        async with self._db.session() as session:
            return await Repository(session).get_user(user_id)

    async def update_user(self, user_id: str, changes: UserChanges) -> UserView:
        async with self._db.session() as session:
            repo = Repository(session)
            user = await repo.update_user(user_id, changes)
            principals = await repo.principals_of_user(user_id)
        logger.info("updated user %s", user_id)
        await self._cache.put_many(principals)
        return user

    async def create_token(
        self,
        user_id: str,
        name: str,
        *,
        expires_at: datetime | None = None,
        allowed_models: Sequence[str] | None = None,
        limits: RateLimits = NO_LIMITS,
        quota: Quota | None = None,
    ) -> TokenView:
        """A new token; its ``token`` field is the full token, never to be shown again."""
        async with self._db.session() as session:
            repo = Repository(session)
            created = await repo.create_token(
                user_id, name, expires_at=expires_at, allowed_models=allowed_models,
                limits=limits, quota=quota,
            )
            principals = await _principals(repo, created.id)
        logger.info("created token %s of user %s", created.id, user_id)
        await self._cache.put_many(principals)
        return created

    async def list_tokens(self, user_id: str | None = None) -> list[TokenView]:
        async with self._db.session() as session:
            return await Repository(session).list_tokens(user_id)

    async def get_token(self, token_id: str) -> TokenView:
        async with self._db.session() as session:
            return await Repository(session).get_token(token_id)

    async def revoke_token(self, token_id: str) -> TokenView:
        async with self._db.session() as session:
            repo = Repository(session)
            revoked = await repo.revoke_token(token_id)
            principals = await _principals(repo, token_id)
        logger.info("revoked token %s", token_id)
        await self._cache.put_many(principals)
        return revoked

    async def update_token(self, token_id: str, changes: TokenChanges) -> TokenView:
        async with self._db.session() as session:
            repo = Repository(session)
            updated = await repo.update_token(token_id, changes)
            principals = await _principals(repo, token_id)
        logger.info("updated token %s", token_id)
        await self._cache.put_many(principals)
        return updated

    async def rebuild_cache(self) -> int:
        """Reload every principal into the cache (``uplion admin cache rebuild``); how many."""
        async with self._db.session() as session:
            count = await principal_cache.rebuild(self._cache, Repository(session))
        logger.info("principal cache rebuilt: %d tokens", count)
        return count


async def _principals(repo: Repository, token_id: str) -> list[Principal]:
    principal = await repo.principal_for(token_id)
    return [] if principal is None else [principal]
