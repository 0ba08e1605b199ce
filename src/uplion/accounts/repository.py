"""Reads and writes of users and tokens in one session, and the principals built from them.

``Repository(session)`` works inside the caller's transaction (``Database.session()``): it
flushes, the session's owner commits. It returns plain records (``UserView``, ``TokenView``,
``Principal``), never ORM objects, and raises ``NotFound``, ``Conflict`` or ``Invalid`` with a
message fit for an API answer. Changes are ``UserChanges`` / ``TokenChanges``: a field left
``UNSET`` keeps its value, ``None`` clears it (no limit, every model). A revocation is final.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import cast

import msgspec
from msgspec import UNSET, UnsetType
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from uplion.accounts import tables, tokens
from uplion.accounts.principal import Period, Principal, Quota, RateLimits, Role

NO_LIMITS = RateLimits()
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_NAME_LENGTH = 64


class AccountsError(Exception):
    """A request the accounts store refuses; the message says why."""


class NotFound(AccountsError):
    pass


class Conflict(AccountsError):
    pass


class Invalid(AccountsError, ValueError):
    pass


class UserView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    role: Role
    active: bool
    allowed_models: list[str] | None
    limits: RateLimits
    quota: Quota | None
    created_at: datetime


class TokenView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A token as lists show it; ``token`` (the full secret token) only in the creation answer."""

    id: str
    user_id: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    allowed_models: list[str] | None
    limits: RateLimits
    quota: Quota | None
    token: str | None = None


class UserChanges(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    role: Role | UnsetType = UNSET
    active: bool | UnsetType = UNSET
    allowed_models: list[str] | UnsetType | None = UNSET
    limits: RateLimits | UnsetType = UNSET
    quota: Quota | UnsetType | None = UNSET


class TokenChanges(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str | UnsetType = UNSET
    expires_at: datetime | UnsetType | None = UNSET
    allowed_models: list[str] | UnsetType | None = UNSET
    limits: RateLimits | UnsetType = UNSET
    quota: Quota | UnsetType | None = UNSET


class Repository:
    """Users, tokens and principals, read and written in ``session``'s transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def count_users(self) -> int:
        return await self._session.scalar(select(func.count()).select_from(tables.User)) or 0

    async def create_user(
        self,
        name: str,
        role: Role = "member",
        *,
        allowed_models: Sequence[str] | None = None,
        limits: RateLimits = NO_LIMITS,
        quota: Quota | None = None,
    ) -> UserView:
        if not _USER_NAME.fullmatch(name):
            raise Invalid(
                f"invalid user name {name!r}: up to 64 letters, digits and . _ @ + -, "
                "starting with a letter or digit"
            )
        if await self._session.scalar(select(tables.User.id).where(tables.User.name == name)):
            raise Conflict(f"a user named {name!r} exists already")
        user = tables.User(
            id=await self._new_user_id(), name=name, role=_role(role), active=True,
            created_at=_now(),
        )
        _set_limits(user, allowed_models, limits, quota)
        self._session.add(user)
        try:
            await self._session.flush()
        except IntegrityError:  # created meanwhile by another transaction
            raise Conflict(f"a user named {name!r} exists already") from None
        return _user_view(user)

    async def list_users(self) -> list[UserView]:
        users = await self._session.scalars(
            select(tables.User).order_by(tables.User.created_at, tables.User.name)
        )
        return [_user_view(user) for user in users]

    async def get_user(self, user_id: str) -> UserView:
        return _user_view(await self._user(user_id))

    async def update_user(self, user_id: str, changes: UserChanges) -> UserView:
        user = await self._user(user_id)
        role = user.role if isinstance(changes.role, UnsetType) else _role(changes.role)
        active = user.active if isinstance(changes.active, UnsetType) else changes.active
        if user.role == "admin" and user.active and not (role == "admin" and active):
            await self._keep_an_admin(user)
        user.role, user.active = role, active
        _change_limits(user, changes.allowed_models, changes.limits, changes.quota)
        await self._session.flush()
        return _user_view(user)

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
        """A new token of ``user_id``; the answer is the only one ever to carry the full token."""
        await self._user(user_id)
        token_id, secret, full_token = tokens.new_token()
        while await self._session.get(tables.ApiToken, token_id) is not None:
            token_id, secret, full_token = tokens.new_token()
        token = tables.ApiToken(
            id=token_id, user_id=user_id, name=_token_name(name),
            secret_hash=tokens.hash_secret(secret),
            prefix=tokens.display_prefix(token_id, secret),
            created_at=_now(), expires_at=_aware(expires_at), revoked_at=None,
        )
        _set_limits(token, allowed_models, limits, quota)
        self._session.add(token)
        await self._session.flush()
        return msgspec.structs.replace(_token_view(token), token=full_token)

    async def list_tokens(self, user_id: str | None = None) -> list[TokenView]:
        query = select(tables.ApiToken).order_by(tables.ApiToken.created_at, tables.ApiToken.id)
        if user_id is not None:
            await self._user(user_id)
            query = query.where(tables.ApiToken.user_id == user_id)
        return [_token_view(token) for token in await self._session.scalars(query)]

    async def get_token(self, token_id: str) -> TokenView:
        return _token_view(await self._token(token_id))

    async def revoke_token(self, token_id: str) -> TokenView:
        """Revoke for good (revoking again changes nothing)."""
        token = await self._token(token_id)
        if token.revoked_at is None:
            token.revoked_at = _now()
            await self._session.flush()
        return _token_view(token)

    async def update_token(self, token_id: str, changes: TokenChanges) -> TokenView:
        token = await self._token(token_id)
        if token.revoked_at is not None:
            raise Conflict(f"token {token_id} is revoked: create a new one")
        if not isinstance(changes.name, UnsetType):
            token.name = _token_name(changes.name)
        if not isinstance(changes.expires_at, UnsetType):
            token.expires_at = _aware(changes.expires_at)
        _change_limits(token, changes.allowed_models, changes.limits, changes.quota)
        await self._session.flush()
        return _token_view(token)

    async def principal_for(self, token_id: str) -> Principal | None:
        """The token with its user, as the gateway admits requests with it; None if unknown."""
        rows = await self._session.execute(
            select(tables.ApiToken, tables.User)
            .join(tables.User, tables.ApiToken.user_id == tables.User.id)
            .where(tables.ApiToken.id == token_id)
        )
        row = rows.one_or_none()
        return None if row is None else _principal(*row)

    async def principals_of_user(self, user_id: str) -> list[Principal]:
        """The principals of every token of the user (revoked ones included)."""
        user = await self._user(user_id)
        owned = await self._session.scalars(
            select(tables.ApiToken).where(tables.ApiToken.user_id == user_id)
        )
        return [_principal(token, user) for token in owned]

    async def all_principals(self) -> list[Principal]:
        """Every token's principal: what a cache rebuild loads."""
        rows = await self._session.execute(
            select(tables.ApiToken, tables.User)
            .join(tables.User, tables.ApiToken.user_id == tables.User.id)
        )
        return [_principal(token, user) for token, user in rows]

    async def _user(self, user_id: str) -> tables.User:
        user = await self._session.get(tables.User, user_id)
        if user is None:
            raise NotFound(f"no user {user_id!r}")
        return user

    async def _token(self, token_id: str) -> tables.ApiToken:
        token = await self._session.get(tables.ApiToken, token_id)
        if token is None:
            raise NotFound(f"no token {token_id!r}")
        return token

    async def _keep_an_admin(self, leaving: tables.User) -> None:
        """Refuse to demote or disable the last active admin (locks the admins on PostgreSQL)."""
        admins = await self._session.scalars(
            select(tables.User.id)
            .where(tables.User.role == "admin", tables.User.active.is_(True))
            .with_for_update()
        )
        if not any(admin_id != leaving.id for admin_id in admins):
            raise Conflict(f"{leaving.name!r} is the last active admin")

    async def _new_user_id(self) -> str:
        user_id = "u_" + secrets.token_hex(6)
        while await self._session.get(tables.User, user_id) is not None:
            user_id = "u_" + secrets.token_hex(6)
        return user_id


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        raise Invalid("a time without a time zone: give it in UTC (e.g. 2030-01-01T00:00:00Z)")
    return moment


def _role(role: str) -> str:
    if role not in tables.ROLES:
        raise Invalid(f"invalid role {role!r}: one of {', '.join(tables.ROLES)}")
    return role


def _token_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > _NAME_LENGTH or not name.isprintable():
        raise Invalid(f"invalid token name {name!r}: 1 to {_NAME_LENGTH} printable characters")
    return name


def _models(models: Sequence[str] | None) -> list[str] | None:
    if models is None:
        return None
    if isinstance(models, str) or not all(isinstance(m, str) and m for m in models):
        raise Invalid("allowed_models must be a list of model names")
    return list(dict.fromkeys(models))


def _check_limits(limits: RateLimits, quota: Quota | None) -> None:
    for field, value in msgspec.structs.asdict(limits).items():
        if value is not None and value < 0:
            raise Invalid(f"{field} must be 0 or more (or null: unlimited)")
    if quota is not None:
        if quota.tokens < 0:
            raise Invalid("a quota's tokens must be 0 or more")
        if quota.period not in tables.PERIODS:
            raise Invalid(f"invalid quota period {quota.period!r}: one of {tables.PERIODS}")


def _set_limits(
    row: tables.User | tables.ApiToken,
    allowed_models: Sequence[str] | None,
    limits: RateLimits,
    quota: Quota | None,
) -> None:
    _check_limits(limits, quota)
    row.allowed_models = _models(allowed_models)
    row.requests_per_minute = limits.requests_per_minute
    row.tokens_per_minute = limits.tokens_per_minute
    row.quota_tokens = None if quota is None else quota.tokens
    row.quota_period = None if quota is None else quota.period


def _change_limits(
    row: tables.User | tables.ApiToken,
    allowed_models: list[str] | UnsetType | None,
    limits: RateLimits | UnsetType,
    quota: Quota | UnsetType | None,
) -> None:
    _set_limits(
        row,
        row.allowed_models if isinstance(allowed_models, UnsetType) else allowed_models,
        _limits(row) if isinstance(limits, UnsetType) else limits,
        _quota(row) if isinstance(quota, UnsetType) else quota,
    )


def _limits(row: tables.User | tables.ApiToken) -> RateLimits:
    return RateLimits(row.requests_per_minute, row.tokens_per_minute)


def _quota(row: tables.User | tables.ApiToken) -> Quota | None:
    if row.quota_tokens is None:
        return None
    return Quota(row.quota_tokens, cast(Period, row.quota_period or "month"))


def _user_view(user: tables.User) -> UserView:
    return UserView(
        id=user.id, name=user.name, role=cast(Role, user.role), active=user.active,
        allowed_models=user.allowed_models, limits=_limits(user), quota=_quota(user),
        created_at=user.created_at,
    )


def _token_view(token: tables.ApiToken) -> TokenView:
    return TokenView(
        id=token.id, user_id=token.user_id, name=token.name, prefix=token.prefix,
        created_at=token.created_at, expires_at=token.expires_at, revoked_at=token.revoked_at,
        allowed_models=token.allowed_models, limits=_limits(token), quota=_quota(token),
    )


def _principal(token: tables.ApiToken, user: tables.User) -> Principal:
    return Principal(
        token_id=token.id,
        token_hash=token.secret_hash,
        user_id=user.id,
        user_name=user.name,
        role=cast(Role, user.role),
        revoked=token.revoked_at is not None,
        expires_at=None if token.expires_at is None else token.expires_at.timestamp(),
        user_active=user.active,
        allowed_models=_intersection(token.allowed_models, user.allowed_models),
        token_limits=_limits(token),
        user_limits=_limits(user),
        token_quota=_quota(token),
        user_quota=_quota(user),
    )


def _intersection(
    token_models: list[str] | None, user_models: list[str] | None
) -> list[str] | None:
    """The models both allow (``None``: no list, every model), in the token's order."""
    if token_models is None:
        return None if user_models is None else list(user_models)
    if user_models is None:
        return list(token_models)
    allowed = set(user_models)
    return [model for model in token_models if model in allowed]
