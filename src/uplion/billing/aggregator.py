"""The billing aggregator: usage events in, one database transaction per batch out.

The loop reads events from the usage stream and holds them until ``flush_events`` are held or
the oldest has waited ``flush_seconds``; then it flushes them in ONE transaction:

1. their event ids go into ``billing_applied_events`` (``ON CONFLICT DO NOTHING RETURNING``),
   which tells which ones were never applied;
2. only those are folded into (user, token, model, version, hour) buckets;
3. the buckets are added to ``usage_hourly`` with one multi-row upsert;

and, after the commit, acks every entry of the batch. Whatever dies in between, nothing is lost
or counted twice: entries not acked are read again (by a restarted or another aggregator, after
the stream's visibility timeout) and their ids are already in the table if the transaction had
committed. A failed transaction is retried with backoff, its entries held and not acked.

Applied ids are forgotten (a bounded ``DELETE`` inside a flush, at most every minute unless
there is more to forget) once older than the stream's retention plus a day of margin for clocks;
an event older than the retention is beyond what the ids can tell, so it is dropped with an error
instead of risking a second count (the stream trims such entries anyway).
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from uplion.accounts import db
from uplion.billing import events, stream, tables

logger = logging.getLogger(__name__)

_MAX_BLOCK_S = 1.0  # how long a stop may wait for a blocked read
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 5.0
_CLOCK_MARGIN_S = 24 * 3600.0
_PRUNE_INTERVAL_S = 60.0


def fold(batch: Iterable[events.UsageEvent]) -> dict[tables.BucketKey, tables.Counters]:
    """Sum the events by (user, token, model, version, hour)."""
    buckets: dict[tables.BucketKey, tables.Counters] = {}
    hours: dict[float, datetime] = {}  # a batch spans an hour or two: one datetime for each
    for event in batch:
        start = event.at - event.at % 3600
        hour = hours.get(start)
        if hour is None:
            hour = hours[start] = tables.hour_of(start)
        key = tables.BucketKey(event.user_id, event.token_id, event.model, event.version, hour)
        counters = buckets.get(key)
        if counters is None:
            counters = buckets[key] = tables.Counters()
        counters.requests += 1
        counters.errors += event.failed
        counters.prompt_tokens += event.prompt_tokens
        counters.completion_tokens += event.completion_tokens
        counters.latency_ms_total += event.latency_ms
    return buckets


class Aggregator:
    """Folds the usage stream into ``usage_hourly``; see the module docstring.

    Counters (read them any time): ``write_transactions`` committed, ``failed_transactions``,
    ``events_flushed`` (distinct events in committed flushes), of which ``events_applied`` were
    new and ``events_duplicate`` had been applied before, and ``events_expired`` dropped as older
    than the retention. ``observe`` (if given) is called after each committed flush with the
    events it applied and the flush's Unix time (``billing.metrics``).
    """

    def __init__(
        self,
        usage: stream.UsageStream,
        database: db.Database,
        *,
        flush_events: int = 500,
        flush_seconds: float = 1.0,
        observe: Callable[[Sequence[events.UsageEvent], float], None] | None = None,
    ) -> None:
        if flush_events <= 0 or flush_seconds <= 0:
            raise ValueError("flush_events and flush_seconds must be positive")
        self._stream = usage
        self._database = database
        self.flush_events = flush_events
        self.flush_seconds = flush_seconds
        self._observe = observe
        self.write_transactions = 0
        self.failed_transactions = 0
        self.events_flushed = 0
        self.events_applied = 0
        self.events_duplicate = 0
        self.events_expired = 0
        self._held: dict[str, events.UsageEvent] = {}  # entry id -> event, in reading order
        self._oldest_at = 0.0  # loop time the first held entry was read
        self._next_prune = 0.0
        self._stopping = False

    @property
    def events_per_transaction(self) -> float:
        return self.events_flushed / self.write_transactions if self.write_transactions else 0.0

    def stop(self) -> None:
        """Ask ``run`` to return; it flushes what it holds first (within about a second)."""
        self._stopping = True

    async def run(self) -> None:
        """Read, fold and flush until ``stop``; then flush what is held (once: if that fails,
        the entries stay unacked and are read again by the next aggregator)."""
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_FIRST_S
        while not self._stopping:
            wait_s = self.flush_seconds
            if self._held:
                wait_s = max(0.0, self._oldest_at + self.flush_seconds - loop.time())
            try:
                entries = await self._stream.read(
                    self.flush_events - len(self._held),
                    math.ceil(min(wait_s, _MAX_BLOCK_S) * 1000),
                )
            except Exception as error:  # the stream's store is down: wait for it
                logger.warning("reading usage events failed (%s); retrying in %.1f s",
                               error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = _BACKOFF_FIRST_S
            if entries and not self._held:
                self._oldest_at = loop.time()
            for entry_id, event in entries:
                self._held.setdefault(entry_id, event)  # our own entries may come back
            if len(self._held) >= self.flush_events:
                await self._flush_until_done("size")
            elif self._held and loop.time() >= self._oldest_at + self.flush_seconds:
                await self._flush_until_done("time")
        if self._held:
            try:
                await self._flush("stop")
            except Exception as error:
                logger.warning("the last flush failed (%s): %d events left to the next aggregator",
                               error, len(self._held))

    async def _flush_until_done(self, trigger: str) -> None:
        backoff = _BACKOFF_FIRST_S
        while True:
            try:
                await self._flush(trigger)
                return
            except Exception as error:  # the database is down: hold the batch, unacked
                logger.warning("flushing %d usage events failed (%s); retrying in %.1f s",
                               len(self._held), error, backoff)
            if self._stopping:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def _flush(self, trigger: str) -> None:
        """Apply the held events in one transaction, then ack them; raises if the write fails."""
        if not self._held:
            return
        unique = {event.event_id: event for event in self._held.values()}
        now = time.time()
        expired = [i for i, event in unique.items() if event.at < now - self._stream.retention_s]
        for event_id in expired:
            del unique[event_id]
        started = time.perf_counter()
        applied_at = datetime.fromtimestamp(now, UTC)
        pruned = 0
        try:
            async with self._database.session() as session:
                new = await tables.mark_applied(session, list(unique), applied_at)
                buckets = fold(unique[event_id] for event_id in new)
                await tables.add_usage(session, buckets)
                if time.monotonic() >= self._next_prune:
                    pruned = await self._prune(session, applied_at)
        except BaseException:
            self.failed_transactions += 1
            raise
        self.write_transactions += 1
        self.events_flushed += len(unique)
        self.events_applied += len(new)
        self.events_duplicate += len(unique) - len(new)
        if self._observe is not None:
            self._observe([unique[event_id] for event_id in new], now)
        if expired:
            self.events_expired += len(expired)
            logger.error("%d usage events older than the retention (%.0f s) dropped: they may "
                         "have been applied already", len(expired), self._stream.retention_s)
        logger.info(
            "flush (%s): %d events (%d new, %d duplicates) into %d rows in 1 transaction, "
            "%.1f ms%s; %d transactions so far, %.1f events per transaction",
            trigger, len(unique), len(new), len(unique) - len(new), len(buckets),
            (time.perf_counter() - started) * 1000,
            f", {pruned} old ids pruned" if pruned else "",
            self.write_transactions, self.events_per_transaction,
        )
        entry_ids = list(self._held)
        self._held.clear()
        try:
            await self._stream.ack(entry_ids)
        except Exception as error:  # applied: a second reading finds the ids, counts nothing
            logger.warning("acking %d applied usage events failed (%s): they will be read "
                           "again and skipped", len(entry_ids), error)

    async def _prune(self, session: AsyncSession, now: datetime) -> int:
        """Forget applied ids past the retention; soon again if there were more than a page."""
        page = 2 * self.flush_events  # more than a flush adds: the table shrinks to its horizon
        before = now - timedelta(seconds=self._stream.retention_s + _CLOCK_MARGIN_S)
        pruned = await tables.prune_applied(session, before, page)
        if pruned < page:
            self._next_prune = time.monotonic() + _PRUNE_INTERVAL_S
        return pruned


async def run_aggregator(
    redis_url: str, database_url: str, flush_events: int = 500, flush_seconds: float = 1.0,
    observe: Callable[[Sequence[events.UsageEvent], float], None] | None = None,
) -> None:
    """The aggregator of a cluster, on the Redis usage stream, until SIGTERM or SIGINT.

    The stream's options may be given in ``redis_url``'s query (``?visibility_timeout_s=10``).
    The database must be migrated already. On a signal, what is held is flushed and acked.
    """
    usage = stream.RedisUsageStream(redis_url)
    database = db.Database(database_url)
    aggregator = Aggregator(
        usage, database, flush_events=flush_events, flush_seconds=flush_seconds, observe=observe
    )
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, aggregator.stop)
    await database.start()
    logger.info("billing aggregator %s started: flush every %d events or %.1f s",
                usage.consumer, flush_events, flush_seconds)
    try:
        await aggregator.run()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        await usage.close()
        await database.close()
    logger.info(
        "billing aggregator stopped: %d events applied, %d duplicates skipped, "
        "%d write transactions (%.1f events each), %d failed",
        aggregator.events_applied, aggregator.events_duplicate, aggregator.write_transactions,
        aggregator.events_per_transaction, aggregator.failed_transactions,
    )
