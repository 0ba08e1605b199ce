"""The billing tables and every statement on them: hourly totals, applied event ids, the report.

- ``usage_hourly``: one row per (user, token, model, version, hour), the sums of the requests
  finished in that UTC hour. Rows are only ever incremented (``add_usage``: one multi-row
  ``INSERT ... ON CONFLICT DO UPDATE`` adding to what is there). No foreign keys: usage outlives
  deleted tokens and users, and a write must never fail because one was deleted meanwhile.
- ``billing_applied_events``: the ids of the events already counted (``mark_applied``: ``INSERT
  ... ON CONFLICT DO NOTHING RETURNING`` tells which ids are new), so that an event read twice is
  counted once. Ids are kept for the stream's retention and then pruned (``prune_applied``).

The conflict clauses are PostgreSQL's and SQLite's (3.35 and later for ``RETURNING``); statements
are split so that none carries more than ``_MAX_PARAMETERS`` bound values (both stores cap them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, TypeVar, cast, get_args

from sqlalchemy import BigInteger, CursorResult, Index, String, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from uplion.accounts import db
from uplion.accounts.tables import UTCDateTime
from uplion.billing import events

_MAX_PARAMETERS = 30_000
_T = TypeVar("_T")

Dimension = Literal["hour", "user_id", "token_id", "model", "version"]
DIMENSIONS: tuple[Dimension, ...] = get_args(Dimension)


class UsageHourly(db.Base):
    __tablename__ = "usage_hourly"
    __table_args__ = (Index("ix_usage_hourly_hour", "hour"),)  # reports over every user

    user_id: Mapped[str] = mapped_column(String(events.ID_LENGTH), primary_key=True)
    token_id: Mapped[str] = mapped_column(String(events.ID_LENGTH), primary_key=True)
    model: Mapped[str] = mapped_column(String(events.NAME_LENGTH), primary_key=True)
    version: Mapped[str] = mapped_column(String(events.NAME_LENGTH), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)  # start of the hour
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    latency_ms_total: Mapped[int] = mapped_column(BigInteger)


class BillingAppliedEvent(db.Base):
    __tablename__ = "billing_applied_events"

    event_id: Mapped[str] = mapped_column(String(events.ID_LENGTH), primary_key=True)
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class BucketKey(NamedTuple):
    """The primary key of a ``usage_hourly`` row."""

    user_id: str
    token_id: str
    model: str
    version: str
    hour: datetime


@dataclasses.dataclass(slots=True)
class Counters:
    """The sums of one bucket."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms_total: int = 0


COUNTERS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(Counters))


@dataclasses.dataclass(frozen=True, slots=True)
class UsageRow:
    """One line of a report: the dimensions it was grouped by (the others are ``None``), sums."""

    hour: datetime | None
    user_id: str | None
    token_id: str | None
    model: str | None
    version: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms_total: int


def hour_of(at: float) -> datetime:
    """The start of the UTC hour that Unix time ``at`` falls in."""
    return datetime.fromtimestamp(at - at % 3600, UTC)


def _insert(session: AsyncSession) -> Any:
    """The store's ``insert`` construct (the one with ``ON CONFLICT``)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert
    if dialect == "sqlite":
        return sqlite.insert
    raise ValueError(f"billing needs PostgreSQL or SQLite, not {dialect}")


def _chunks(rows: Sequence[_T], columns: int) -> Iterator[Sequence[_T]]:
    size = _MAX_PARAMETERS // columns
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


async def mark_applied(session: AsyncSession, event_ids: Sequence[str], at: datetime) -> set[str]:
    """Record ``event_ids`` as applied at ``at``; return those that were not recorded before.

    Concurrent aggregators inserting the same id: the second waits for the first's transaction
    and sees its id if it committed, so an id is new to exactly one of them.
    """
    if not event_ids:
        return set()
    table = BillingAppliedEvent.__table__  # Core, not the ORM's bulk insert: less per row
    statement = (
        _insert(session)(table)
        .on_conflict_do_nothing(index_elements=[table.c.event_id])
        .returning(table.c.event_id)
    )
    rows = [{"event_id": event_id, "applied_at": at} for event_id in sorted(event_ids)]
    return set((await session.execute(statement, rows)).scalars())


async def add_usage(session: AsyncSession, buckets: Mapping[BucketKey, Counters]) -> None:
    """Add the counters to their rows: one multi-row upsert (split only past the bound limit).

    Rows go in key order, so that concurrent writers lock shared rows in the same order.
    """
    rows = [
        {**key._asdict(), **dataclasses.asdict(counters)}
        for key, counters in sorted(buckets.items())
    ]
    insert = _insert(session)
    for chunk in _chunks(rows, columns=len(BucketKey._fields) + len(COUNTERS)):
        statement = insert(UsageHourly).values(chunk)
        statement = statement.on_conflict_do_update(
            index_elements=list(BucketKey._fields),
            set_={
                name: getattr(UsageHourly, name) + getattr(statement.excluded, name)
                for name in COUNTERS
            },
        )
        await session.execute(statement)


async def prune_applied(session: AsyncSession, before: datetime, limit: int) -> int:
    """Forget at most ``limit`` applied ids recorded before ``before``; return how many."""
    oldest = (
        select(BillingAppliedEvent.event_id)
        .where(BillingAppliedEvent.applied_at < before)
        .limit(limit)
    )
    statement = delete(BillingAppliedEvent).where(
        BillingAppliedEvent.event_id.in_(oldest.scalar_subquery())
    )
    result = cast(CursorResult[Any], await session.execute(statement))
    return result.rowcount


async def usage_report(
    database: db.Database,
    since: datetime,
    until: datetime,
    *,
    user_id: str | None = None,
    token_id: str | None = None,
    model: str | None = None,
    group_by: Sequence[Dimension] = ("hour", "user_id", "token_id", "model"),
) -> list[UsageRow]:
    """Usage of the hours in ``[since, until)``, optionally of one user, token or model.

    Rows are summed over the dimensions not in ``group_by`` and ordered by those in it.
    """
    unknown = set(group_by) - set(DIMENSIONS)
    if unknown:
        raise ValueError(f"cannot group usage by {sorted(unknown)}: choose from {DIMENSIONS}")
    dimensions = [name for name in DIMENSIONS if name in group_by]
    keys = [getattr(UsageHourly, name) for name in dimensions]
    sums = [func.sum(getattr(UsageHourly, name)) for name in COUNTERS]
    query = (
        select(*keys, *sums)
        .where(UsageHourly.hour >= since, UsageHourly.hour < until)
        .group_by(*keys)
        .order_by(*keys)
    )
    for name, value in (("user_id", user_id), ("token_id", token_id), ("model", model)):
        if value is not None:
            query = query.where(getattr(UsageHourly, name) == value)
    async with database.session() as session:
        result = await session.execute(query)
        rows = result.all()
    report: list[UsageRow] = []
    for row in rows:
        found = dict(zip(dimensions, row, strict=False))
        # PostgreSQL sums BIGINT as NUMERIC: back to int (no rows at all: NULL, 0).
        requests, errors, prompt, completion, latency = (int(sum_ or 0) for sum_ in row[len(keys):])
        report.append(UsageRow(
            hour=found.get("hour"), user_id=found.get("user_id"), token_id=found.get("token_id"),
            model=found.get("model"), version=found.get("version"), requests=requests,
            errors=errors, prompt_tokens=prompt, completion_tokens=completion,
            latency_ms_total=latency,
        ))
    return report
