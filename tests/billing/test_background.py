"""The in-process aggregator in a thread of its own: off the gateway's loop, still exactly once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from tests.billing.test_aggregator import make_event, totals
from uplion.accounts import db
from uplion.billing import background, events, stream


class Flushes:
    """What the aggregator's ``observe`` saw: the events each flush applied, the thread it ran
    on; ``reached`` is set on the gateway's loop once ``expected`` events were applied."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.applied = 0
        self.threads: set[int] = set()
        self.loop = asyncio.get_running_loop()
        self.reached = asyncio.Event()

    def __call__(self, applied: Sequence[events.UsageEvent], _at: float) -> None:
        self.threads.add(threading.get_ident())
        self.applied += len(applied)
        if self.applied >= self.expected:
            self.loop.call_soon_threadsafe(self.reached.set)


async def test_flushes_run_in_their_own_thread_and_count_each_event_once(
    database: db.Database,
) -> None:
    usage = stream.MemoryUsageStream()  # the gateway's: it lives on this loop
    flushes = Flushes(expected=300)
    thread = background.AggregatorThread(
        usage, database.url, flush_events=100, flush_seconds=0.2, observe=flushes
    )
    running = asyncio.create_task(thread.run())
    for index in range(300):
        usage.emit(make_event(index))
    for index in range(50):  # sent twice (a producer's retry): counted once
        usage.emit(make_event(index))
    async with asyncio.timeout(20):
        await flushes.reached.wait()
    thread.stop()
    await running

    assert threading.get_ident() not in flushes.threads
    assert thread.aggregator is not None
    assert thread.aggregator.events_applied == 300
    row = await totals(database)  # read through the gateway's own engine
    assert (row.requests, row.prompt_tokens) == (300, sum(range(300)))


class Watched(stream.MemoryUsageStream):
    """A memory stream that tells when entries were read (on its own loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.read_entries = 0
        self.was_read = asyncio.Event()

    async def read(self, count: int, block_ms: int) -> list[stream.Entry]:
        entries = await super().read(count, block_ms)
        self.read_entries += len(entries)
        if entries:
            self.was_read.set()
        return entries


async def test_a_stop_flushes_what_is_held(database: db.Database) -> None:
    usage = Watched()
    for index in range(10):
        usage.emit(make_event(index))
    thread = background.AggregatorThread(usage, database.url, flush_events=1000,
                                         flush_seconds=3600)
    running = asyncio.create_task(thread.run())
    async with asyncio.timeout(10):
        await usage.was_read.wait()
    assert usage.read_entries == 10  # held: neither a full batch nor old enough to flush
    thread.stop()
    await running

    assert thread.aggregator is not None
    assert thread.aggregator.write_transactions == 1
    assert (await totals(database)).requests == 10
    assert await usage.read(10, block_ms=1) == []  # acked


class Counted(Watched):
    """A memory stream that counts the reads that found entries and tells when ``expected``
    entries were read."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.reads = 0
        self.all_read = asyncio.Event()

    async def read(self, count: int, block_ms: int) -> list[stream.Entry]:
        entries = await super().read(count, block_ms)
        self.reads += bool(entries)
        if self.read_entries >= self.expected:
            self.all_read.set()
        return entries


async def test_events_that_trickle_in_cross_to_the_thread_in_batches(
    database: db.Database,
) -> None:
    """Each read wakes the gateway's loop and takes the GIL from it: one per event (a request
    at a time) would cost every request that, so events gather between reads."""
    usage = Counted(expected=100)
    thread = background.AggregatorThread(usage, database.url, flush_events=1000,
                                         flush_seconds=3600)
    running = asyncio.create_task(thread.run())
    loop = asyncio.get_running_loop()
    started = loop.time()
    for index in range(100):  # one request at a time, a millisecond apart
        usage.emit(make_event(index))
        await asyncio.sleep(0.001)
    async with asyncio.timeout(10):
        await usage.all_read.wait()
    elapsed = loop.time() - started
    thread.stop()
    await running

    assert usage.reads <= 2 + elapsed / background.GATHER_S
    assert thread.aggregator is not None
    assert thread.aggregator.events_applied == 100
