"""Who calls: everything the gateway needs to admit a request, in one cacheable record.

A principal is one API token seen together with its user: the token's hash and state, the user's
role, the model allow-list, rate limits and quotas of both. It is built from the database and kept
in the cache (Redis in clusters, in-process on one machine), so the request path never touches
the database while the cache holds it.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import msgspec

Role = Literal["admin", "member"]
Period = Literal["hour", "day", "month"]
Amount = Annotated[int, msgspec.Meta(le=(1 << 53) - 1)]
"""A limit or a budget: at most 2**53 - 1, what the databases store and Lua counts exactly."""


class RateLimits(msgspec.Struct, frozen=True):
    """Per-minute limits; ``None`` is unlimited."""

    requests_per_minute: Amount | None = None
    tokens_per_minute: Amount | None = None


class Quota(msgspec.Struct, frozen=True):
    """A budget of tokens (prompt + completion) per calendar period (UTC)."""

    tokens: Amount
    period: Period = "month"


class Principal(msgspec.Struct, frozen=True):
    token_id: str
    token_hash: str
    user_id: str
    user_name: str
    role: Role
    revoked: bool = False
    expires_at: float | None = None
    user_active: bool = True
    allowed_models: list[str] | None = None
    token_limits: RateLimits = RateLimits()
    user_limits: RateLimits = RateLimits()
    token_quota: Quota | None = None
    user_quota: Quota | None = None

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


encode = msgspec.json.Encoder().encode
decode = msgspec.json.Decoder(Principal).decode
