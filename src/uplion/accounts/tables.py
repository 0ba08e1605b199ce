"""The accounts tables: users and their API tokens (schema changes go in ``migrations``).

Limits, quotas and model allow-lists exist on both: a request must pass the token's and the user's.
``NULL`` means "no limit" (or "every model"). The request path never writes here: there is no
last-used column, the gateway reads principals from the cache.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    String,
    TypeDecorator,
)
from sqlalchemy.orm import Mapped, mapped_column

from uplion.accounts import db

ROLES = ("admin", "member")
PERIODS = ("hour", "day", "month")


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every store (SQLite keeps no time zone and returns naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: give times with a time zone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class _Limits:
    """The columns users and tokens both have: allow-list, rate limits, quota."""

    allowed_models: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)
    quota_tokens: Mapped[int | None] = mapped_column(BigInteger)
    quota_period: Mapped[str | None] = mapped_column(String(8))


class User(_Limits, db.Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(_in("role", ROLES), name="role"),
        CheckConstraint(_in("quota_period", PERIODS), name="quota_period"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # "u_" + 12 hex digits
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiToken(_Limits, db.Base):
    """A token ``upl-<id>-<secret>``; only the SHA-256 of the secret is kept.

    A fast hash is right here (no bcrypt/argon2): the secret holds 256+ random bits, no password,
    so there is nothing to guess and slowing the hash would only slow down every cache fill.
    """

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint(_in("quota_period", PERIODS), name="quota_period"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # 12 hex digits
    user_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex digest of the secret
    prefix: Mapped[str] = mapped_column(String(64))  # "upl-<id>-<first secret chars>", for display
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
