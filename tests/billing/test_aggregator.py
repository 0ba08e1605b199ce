"""The aggregator on both stores: folding, a transaction per flush, exactly once across crashes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, func, select

from uplion.accounts import db
from uplion.billing import aggregator, events, stream, tables

HOUR = 3600.0
NOW = time.time()
THIS_HOUR = NOW - NOW % HOUR
BILLING_TABLES = {"usage_hourly", "billing_applied_events"}
ALWAYS = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def make_event(
    index: int, *, user: str = "u1", token: str = "t1", model: str = "m", status: int = 200,
    at: float = THIS_HOUR + 10,
) -> events.UsageEvent:
    return events.UsageEvent(
        event_id=f"e{index}", token_id=token, user_id=user, model=model, version="1",
        prompt_tokens=index, completion_tokens=2 * index, latency_ms=index % 7, status=status,
        at=at,
    )


class LosingAcks(stream.MemoryUsageStream):
    """A memory stream whose acks are lost while ``losing``: as if the aggregator died after
    committing and before acking."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.losing = False

    async def ack(self, entry_ids: Sequence[str]) -> None:
        if not self.losing:
            await super().ack(entry_ids)

    @property
    def unacked(self) -> int:
        return len(self._pending) + len(self._waiting)


async def totals(database: db.Database) -> tables.UsageRow:
    [row] = await tables.usage_report(database, *ALWAYS, group_by=())
    return row


async def applied_ids(database: db.Database) -> int:
    async with database.session() as session:
        count = await session.scalar(select(func.count()).select_from(tables.BillingAppliedEvent))
    return int(count or 0)


async def until(condition: Callable[[], Any], timeout: float = 5) -> None:
    """Poll the counters of a running aggregator until ``condition`` holds."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


class Running:
    """An aggregator running in a task; ``stop`` it (graceful) or ``kill`` it (cancelled)."""

    def __init__(self, instance: aggregator.Aggregator) -> None:
        self.instance = instance
        self.task = asyncio.create_task(instance.run())

    async def stop(self) -> None:
        self.instance.stop()
        await self.task

    async def kill(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def running() -> AsyncIterator[list[Running]]:
    """Aggregators started by the test; those it left running are killed at the end."""
    started: list[Running] = []
    yield started
    for each in started:
        await each.kill()


def start(started: list[Running], *args: Any, **options: Any) -> aggregator.Aggregator:
    each = Running(aggregator.Aggregator(*args, **options))
    started.append(each)
    return each.instance


def test_fold_sums_by_user_token_model_version_and_hour() -> None:
    batch = [
        make_event(1), make_event(2, status=500), make_event(3, at=THIS_HOUR - 1),
        make_event(4, model="other"), make_event(5, token="t2"), make_event(6, status=429),
    ]
    hour = datetime.fromtimestamp(THIS_HOUR, UTC)
    previous = datetime.fromtimestamp(THIS_HOUR - HOUR, UTC)
    assert aggregator.fold(batch) == {
        tables.BucketKey("u1", "t1", "m", "1", hour): tables.Counters(3, 2, 9, 18, 1 + 2 + 6),
        tables.BucketKey("u1", "t1", "m", "1", previous): tables.Counters(1, 0, 3, 6, 3),
        tables.BucketKey("u1", "t1", "other", "1", hour): tables.Counters(1, 0, 4, 8, 4),
        tables.BucketKey("u1", "t2", "m", "1", hour): tables.Counters(1, 0, 5, 10, 5),
    }


async def test_the_migration_matches_the_tables(database: db.Database) -> None:

    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={
            "include_object": lambda _object, name, kind, _reflected, _compare_to: (
                kind != "table" or name in BILLING_TABLES
            ),
        })
        return list(compare_metadata(context, db.Base.metadata))

    async with database.session() as session:
        assert await session.run_sync(lambda s: differences(s.connection())) == []


async def test_flushes_every_n_events_or_t_seconds_one_transaction_each(
    database: db.Database, running: list[Running]
) -> None:
    usage = stream.MemoryUsageStream()
    worker = start(running, usage, database, flush_events=100, flush_seconds=0.3)
    for index in range(250):
        usage.emit(make_event(index))
    await until(lambda: worker.write_transactions == 2)  # two full batches at once
    assert worker.events_flushed == 200
    await until(lambda: worker.write_transactions == 3, timeout=2)  # the rest after T
    assert (worker.events_applied, worker.failed_transactions) == (250, 0)
    row = await totals(database)
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (
        250, sum(range(250)), 2 * sum(range(250))
    )
    assert row.latency_ms_total == sum(index % 7 for index in range(250))


async def test_an_event_read_twice_is_counted_once(
    database: db.Database, running: list[Running]
) -> None:
    usage = stream.MemoryUsageStream()
    worker = start(running, usage, database, flush_events=10, flush_seconds=0.05)
    for index in [1, 2, 2, 3]:  # a producer retry within a batch
        usage.emit(make_event(index))
    await until(lambda: worker.write_transactions == 1)
    for index in [3, 4]:  # and across batches
        usage.emit(make_event(index))
    await until(lambda: worker.write_transactions == 2)
    assert (worker.events_applied, worker.events_duplicate) == (4, 1)
    assert (await totals(database)).requests == 4
    assert await applied_ids(database) == 4


async def test_a_crash_between_commit_and_ack_counts_nothing_twice(
    database: db.Database, running: list[Running]
) -> None:
    usage = LosingAcks(visibility_timeout_s=0.3)
    usage.losing = True
    first = start(running, usage, database, flush_events=50, flush_seconds=0.05)
    for index in range(120):
        usage.emit(make_event(index))
    await until(lambda: first.events_applied == 120)
    await running[0].kill()  # committed, never acked
    usage.losing = False
    assert usage.unacked == 120

    second = start(running, usage, database, flush_events=50, flush_seconds=0.05)
    await until(lambda: usage.unacked == 0)  # claimed after the visibility timeout
    assert (second.events_applied, second.events_duplicate) == (0, 120)
    assert (await totals(database)).requests == 120


async def test_a_failed_write_is_retried_and_nothing_acked_until_it_commits(
    database_url: str, running: list[Running]
) -> None:
    database = db.Database(database_url)  # not migrated yet: every write fails
    await database.start()
    try:
        usage = LosingAcks()
        worker = start(running, usage, database, flush_events=20, flush_seconds=0.05)
        for index in range(30):
            usage.emit(make_event(index))
        await until(lambda: worker.failed_transactions >= 2)
        assert (worker.write_transactions, usage.unacked) == (0, 30)
        await db.migrate(database_url)
        await until(lambda: usage.unacked == 0)
        assert (worker.events_applied, (await totals(database)).requests) == (30, 30)
    finally:
        await running[0].kill()
        await database.close()


async def test_stop_flushes_what_is_held(database: db.Database, running: list[Running]) -> None:
    usage = LosingAcks()
    worker = start(running, usage, database, flush_events=1_000, flush_seconds=60)
    for index in range(7):
        usage.emit(make_event(index))
    await until(lambda: usage.unacked == 7 and not usage._waiting)
    await running[0].stop()
    assert (worker.write_transactions, usage.unacked) == (1, 0)
    assert (await totals(database)).requests == 7


async def test_old_applied_ids_are_pruned_and_too_old_events_dropped(
    database: db.Database, running: list[Running]
) -> None:
    usage = stream.MemoryUsageStream(retention_s=HOUR)
    long_ago = datetime.now(UTC) - timedelta(days=2)
    async with database.session() as session:
        await tables.mark_applied(session, [f"old{index}" for index in range(25)], long_ago)
        await tables.mark_applied(session, ["recent"], datetime.now(UTC) - timedelta(hours=2))
    worker = start(running, usage, database, flush_events=10, flush_seconds=0.05)
    usage.emit(make_event(1, at=time.time() - 2 * HOUR))  # beyond what applied ids tell
    usage.emit(make_event(2, at=time.time()))
    await until(lambda: worker.write_transactions == 1)
    # 20 (two flushes' worth) per flush while there are more; "recent" is within retention + margin
    assert await applied_ids(database) == 1 + 5 + 1
    assert (worker.events_applied, worker.events_expired) == (1, 1)
    usage.emit(make_event(3))
    await until(lambda: worker.write_transactions == 2)
    assert await applied_ids(database) == 1 + 2


async def test_report_groups_and_filters(database: db.Database, running: list[Running]) -> None:
    usage = stream.MemoryUsageStream()
    worker = start(running, usage, database, flush_events=100, flush_seconds=0.05)
    batch = [
        make_event(1), make_event(2, status=500), make_event(3, at=THIS_HOUR - 60),
        make_event(4, user="u2", token="t9"), make_event(5, model="other"),
    ]
    for event in batch:
        usage.emit(event)
    await until(lambda: worker.events_applied == len(batch))
    hour = datetime.fromtimestamp(THIS_HOUR, UTC)
    previous = hour - timedelta(hours=1)

    rows = await tables.usage_report(database, *ALWAYS)
    assert [(r.hour, r.user_id, r.token_id, r.model, r.version, r.requests) for r in rows] == [
        (previous, "u1", "t1", "m", None, 1),
        (hour, "u1", "t1", "m", None, 2),
        (hour, "u1", "t1", "other", None, 1),
        (hour, "u2", "t9", "m", None, 1),
    ]
    assert rows[1].errors == 1
    by_user = await tables.usage_report(database, *ALWAYS, group_by=["user_id"])
    assert [(r.user_id, r.requests, r.prompt_tokens) for r in by_user] == [
        ("u1", 4, 1 + 2 + 3 + 5), ("u2", 1, 4)
    ]
    this_hour = await tables.usage_report(
        database, hour, hour + timedelta(hours=1), model="m", group_by=["model", "version"]
    )
    assert [(r.model, r.version, r.requests) for r in this_hour] == [("m", "1", 3)]
    assert [r.requests for r in await tables.usage_report(
        database, *ALWAYS, user_id="u1", token_id="t1", group_by=["hour"])] == [1, 3]
    # An aware time in any zone is the same instant; naive ones are refused.
    elsewhere = hour.astimezone(timezone(timedelta(hours=1)))
    assert len(await tables.usage_report(database, elsewhere, ALWAYS[1], group_by=["hour"])) == 1
    with pytest.raises(ValueError, match="cannot group"):
        await tables.usage_report(database, *ALWAYS, group_by=["color"])  # type: ignore[list-item]

