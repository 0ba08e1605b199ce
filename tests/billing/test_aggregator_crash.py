"""The required crash test: 10,000 requests from 3 gateway processes, the aggregator SIGKILLed
mid-run and restarted; the database totals equal the requests made, exactly.

The kill is aimed at the worst moment: after the aggregator committed a flush and before it acked
the batch (its transaction is held back by a table lock, Redis writes are paused while it commits,
and it is killed once it logs the commit). Its successor reads that batch again and must skip it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio
from sqlalchemy import func, select, text

from tests.stores import PostgresServer
from uplion.accounts import db
from uplion.billing import events, stream, tables

pytestmark = pytest.mark.redis

ROOT = Path(__file__).parents[2]
REQUESTS = 10_000
PRODUCERS = 3
RATE = 1_000.0  # events per second per producer: the run lasts about 3.5 s
FLUSH_EVENTS = 500
FLUSH_SECONDS = 1.0
VISIBILITY_TIMEOUT_S = 2.0
ALWAYS = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
FLUSH_LINE = re.compile(r"flush \((\w+)\): (\d+) events \((\d+) new, (\d+) duplicates\)")
TAKEOVER_LINE = re.compile(r"took over (\d+) usage events")
WAITING_ON_USAGE = text(
    "SELECT count(*) FROM pg_locks WHERE relation = 'usage_hourly'::regclass AND NOT granted"
)

PRODUCER = (
    "import asyncio, sys; from tests.billing import test_aggregator_crash as t; "
    "asyncio.run(t.produce(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))"
)
AGGREGATOR = (
    "import asyncio, logging, sys; from uplion.billing import aggregator; "
    "logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
    "asyncio.run(aggregator.run_aggregator(sys.argv[1], sys.argv[2], "
    f"{FLUSH_EVENTS}, {FLUSH_SECONDS}))"
)

Flush = tuple[str, int, int, int]


def usage_event(producer: int, n: int, at: float) -> events.UsageEvent:
    """The n-th request of a producer (a gateway process)."""
    return events.UsageEvent(
        event_id=f"gw{producer}-{n:06d}", token_id=f"t{n % 5}", user_id=f"u{n % 3}", model="m",
        version="1", prompt_tokens=1 + n % 17, completion_tokens=n % 11, latency_ms=n % 50,
        status=500 if n % 97 == 0 else 200, at=at,
    )


async def produce(redis_url: str, producer: int, count: int) -> None:
    """A gateway's emits at ``RATE`` per second; prints how many were dropped."""
    usage = stream.RedisUsageStream(redis_url)
    started = time.monotonic()
    for n in range(count):
        usage.emit(usage_event(producer, n, time.time()))
        if n % 50 == 49:
            await asyncio.sleep(max(0.0, started + (n + 1) / RATE - time.monotonic()))
    await usage.close()
    print(f"dropped={usage.dropped}")


async def spawn(code: str, *args: str, log: Path) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, *args, stdout=out, stderr=asyncio.subprocess.STDOUT,
            env=env,
        )


async def until(condition: Callable[[], bool], what: str, timeout: float) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def flushes(log: Path) -> list[Flush]:
    """(trigger, events, new, duplicates) of every flush the aggregator logged."""
    return [(m[1], int(m[2]), int(m[3]), int(m[4])) for m in FLUSH_LINE.finditer(log.read_text())]


async def kill_between_commit_and_ack(
    victim: asyncio.subprocess.Process, log: Path, database: db.Database,
    client: redis.asyncio.Redis,
) -> None:
    """Hold the victim's next flush at the table lock, pause Redis writes (its ack), let the
    flush commit, and kill it as soon as it logs the commit."""
    logged = len(flushes(log))
    async with database.session() as session:
        await session.execute(text("LOCK TABLE usage_hourly IN SHARE MODE"))
        for _ in range(500):
            async with database.session() as observer:
                if await observer.scalar(WAITING_ON_USAGE):
                    break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the aggregator never flushed into the locked table")
        await client.client_pause(10_000, all=False)  # writes only: XACK waits
    try:
        await until(lambda: len(flushes(log)) > logged, "the held flush to commit", 10)
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
    finally:
        await client.client_unpause()


async def database_totals(database: db.Database) -> tuple[tables.UsageRow, int]:
    """The sums over all of ``usage_hourly`` and the number of applied ids."""
    [row] = await tables.usage_report(database, *ALWAYS, group_by=())
    async with database.session() as session:
        ids = await session.scalar(select(func.count()).select_from(tables.BillingAppliedEvent))
    return row, int(ids or 0)


async def test_sigkilled_aggregator_loses_nothing_and_counts_nothing_twice(
    clean_redis: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    database_url = postgres_server.create_database()
    await db.migrate(database_url)
    database = db.Database(database_url)
    await database.start()
    client = redis.asyncio.Redis.from_url(clean_redis)
    redis_url = f"{clean_redis}?visibility_timeout_s={VISIBILITY_TIMEOUT_S}"
    logs = [tmp_path / "aggregator-1.log", tmp_path / "aggregator-2.log"]
    counts = [REQUESTS // PRODUCERS + (p < REQUESTS % PRODUCERS) for p in range(PRODUCERS)]
    processes: list[asyncio.subprocess.Process] = []
    try:
        victim = await spawn(AGGREGATOR, redis_url, database_url, log=logs[0])
        processes.append(victim)
        await until(lambda: "started" in logs[0].read_text(), "the aggregator to start", 20)
        producers = [
            await spawn(PRODUCER, redis_url, str(p), str(count), log=tmp_path / f"gw-{p}.log")
            for p, count in enumerate(counts)
        ]
        processes += producers
        await until(lambda: len(flushes(logs[0])) >= 3, "three flushes", 20)
        await kill_between_commit_and_ack(victim, logs[0], database, client)
        still_producing = sum(p.returncode is None for p in producers)
        successor = await spawn(AGGREGATOR, redis_url, database_url, log=logs[1])
        processes.append(successor)

        for p, producer in enumerate(producers):
            assert await asyncio.wait_for(producer.wait(), 30) == 0
            assert "dropped=0" in (tmp_path / f"gw-{p}.log").read_text()
        for _ in range(1_500):  # 30 s
            pending = await client.xpending(stream.STREAM, stream.GROUP)
            [group] = await client.xinfo_groups(stream.STREAM)
            if pending["pending"] == 0 and group["lag"] == 0:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the usage events were never all acked")
        successor.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(successor.wait(), 20) == 0
        totals, applied = await database_totals(database)
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await client.aclose()
        await database.close()

    made = [usage_event(p, n, 0) for p, count in enumerate(counts) for n in range(count)]
    assert applied == REQUESTS
    assert totals.requests == len(made) == REQUESTS
    assert totals.errors == sum(event.failed for event in made)
    assert totals.prompt_tokens == sum(event.prompt_tokens for event in made)
    assert totals.completion_tokens == sum(event.completion_tokens for event in made)
    assert totals.latency_ms_total == sum(event.latency_ms for event in made)

    before, after = flushes(logs[0]), flushes(logs[1])
    everything = before + after
    transactions = len(everything)
    flushed = sum(flush[1] for flush in everything)
    duplicates = sum(flush[3] for flush in after)
    full = [flush[1] for flush in everything if flush[0] == "size"]
    claimed = sum(int(m[1]) for m in TAKEOVER_LINE.finditer(logs[1].read_text()))
    assert sum(flush[2] for flush in everything) == REQUESTS
    assert duplicates == before[-1][1]  # the batch committed and never acked, skipped
    print(
        f"\n{REQUESTS} requests from {PRODUCERS} gateway processes; aggregator SIGKILLed after "
        f"committing flush {len(before)} and before acking it ({still_producing} gateways still "
        f"producing), restarted.\n"
        f"database write transactions: {transactions} ({len(before)} before the kill, "
        f"{len(after)} after), {flushed} events flushed = {flushed / transactions:.0f} events "
        f"per transaction; {len(full)} flushes by size ({sum(full)} events), "
        f"{transactions - len(full)} by time or stop; the successor took over {claimed} events "
        f"the killed one had read, {duplicates} of them already applied (skipped)."
    )
    assert still_producing > 0  # the kill was mid-run
