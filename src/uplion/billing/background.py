"""The in-process aggregator (``uplion run``), in a thread of its own, off the gateway's loop.

A flush builds SQL statements and reads their results in Python: run in the gateway's event
loop, it would hold every request waiting on that loop for as long. Here the aggregator runs in
a thread with its own event loop and its own engine on the database (connections belong to the
loop that opened them). It reads and acks the usage stream through the loop that owns the stream
(``LoopStream``). Each read wakes that loop and passes the GIL between the two threads, so after
a read that drained the stream the next waits ``GATHER_S`` for events to gather: otherwise a
request at a time costs a read per event, and the request behind it waits for the GIL.

Exactly-once is the aggregator's own argument, unchanged: the same stream, the same transaction
per flush, acks after the commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from uplion.accounts import db
from uplion.billing import aggregator, events, stream

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
GATHER_S = 0.1
"""How long events gather after a read that drained the stream, before the next read."""

Observer = Callable[[Sequence[events.UsageEvent], float], None]
"""What ``Aggregator`` calls after each committed flush (its ``observe``)."""


class LoopStream(stream.UsageStream):
    """``usage``, which belongs to the event loop ``loop``, used from another thread's loop."""

    def __init__(self, usage: stream.UsageStream, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(visibility_timeout_s=usage.visibility_timeout_s,
                         retention_s=usage.retention_s)
        self._usage = usage
        self._loop = loop
        self._drained = False

    def emit(self, event: events.UsageEvent) -> None:
        self._loop.call_soon_threadsafe(self._usage.emit, event)

    async def read(self, count: int, block_ms: int) -> list[stream.Entry]:
        if self._drained:  # let events gather rather than cross for each one
            gather_ms = min(block_ms, round(GATHER_S * 1000))
            await asyncio.sleep(gather_ms / 1000)
            block_ms -= gather_ms
        entries = await self._on_loop(self._usage.read(count, block_ms))
        self._drained = len(entries) < count
        return entries

    async def ack(self, entry_ids: Sequence[str]) -> None:
        await self._on_loop(self._usage.ack(entry_ids))

    async def close(self) -> None:
        """Nothing: the stream is its own loop's to close."""

    async def _on_loop(self, call: Coroutine[Any, Any, _T]) -> _T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call, self._loop))


class AggregatorThread:
    """An ``Aggregator`` of ``usage`` (a stream of the loop that awaits ``run``) into the
    database at ``database_url``, run in its own thread (``observe`` is called there too).
    Its counters are the aggregator's."""

    def __init__(
        self, usage: stream.UsageStream, database_url: str, *, flush_events: int = 500,
        flush_seconds: float = 1.0, observe: Observer | None = None,
    ) -> None:
        self._usage = usage
        self._database = db.Database(database_url)
        self._flush_events = flush_events
        self._flush_seconds = flush_seconds
        self._observe = observe
        self._stopping = threading.Event()
        self.aggregator: aggregator.Aggregator | None = None

    def stop(self) -> None:
        """Ask ``run`` to return; the aggregator flushes what it holds first."""
        self._stopping.set()
        if self.aggregator is not None:
            self.aggregator.stop()

    async def run(self) -> None:
        """Aggregate in the thread until ``stop``; return when the thread has ended."""
        usage = LoopStream(self._usage, asyncio.get_running_loop())
        ended: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread = threading.Thread(
            target=self._main, args=(usage, ended), name="billing-aggregator", daemon=True
        )
        thread.start()
        try:
            await asyncio.shield(asyncio.wrap_future(ended))
        except asyncio.CancelledError:
            self.stop()
            await asyncio.wrap_future(ended)
            raise

    def _main(self, usage: LoopStream, ended: concurrent.futures.Future[None]) -> None:
        try:
            asyncio.run(self._aggregate(usage))
        except BaseException as error:
            logger.exception("the billing aggregator's thread failed")
            ended.set_exception(error)
        else:
            ended.set_result(None)

    async def _aggregate(self, usage: LoopStream) -> None:
        self.aggregator = aggregator.Aggregator(
            usage, self._database, flush_events=self._flush_events,
            flush_seconds=self._flush_seconds, observe=self._observe,
        )
        if self._stopping.is_set():  # stopped before the thread got here
            self.aggregator.stop()
        await self._database.start()
        try:
            await self.aggregator.run()
        finally:
            await self._database.close()
