"""Users, API tokens, limits and quotas: stored with SQLAlchemy, served to the gateway from a cache.

The public face: ``Database`` and ``migrate`` (the store), ``AccountService`` (what the admin API,
the CLI and the gateway call), the two principal caches, the records they exchange, and the errors.
"""

from __future__ import annotations

from uplion.accounts.cache import (
    MemoryPrincipalCache,
    PrincipalCache,
    RedisPrincipalCache,
    StoreUnavailable,
)
from uplion.accounts.db import Base, Database, default_url, migrate
from uplion.accounts.principal import Principal, Quota, RateLimits
from uplion.accounts.repository import (
    AccountsError,
    Conflict,
    Invalid,
    NotFound,
    TokenChanges,
    TokenView,
    UserChanges,
    UserView,
)
from uplion.accounts.service import AccountService, principal_loader

__all__ = [
    "AccountService",
    "AccountsError",
    "Base",
    "Conflict",
    "Database",
    "Invalid",
    "MemoryPrincipalCache",
    "NotFound",
    "Principal",
    "PrincipalCache",
    "Quota",
    "RateLimits",
    "RedisPrincipalCache",
    "StoreUnavailable",
    "TokenChanges",
    "TokenView",
    "UserChanges",
    "UserView",
    "default_url",
    "migrate",
    "principal_loader",
]
