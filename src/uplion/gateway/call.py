"""One request's life at the gateway, from its task's publication to its one end.

A ``Call`` follows its task's reply (through the relay, put in order by ``relay.Reassembly``)
and hands the chunks to the request's handler. It ends exactly once, in ``finish(outcome,
usage)``: synchronous and idempotent, and the first thing done on every end:

- answered (the final chunk: the worker's usage), failed (an error chunk, or chunks lost on the
  way), timed out (a timer at the deadline, whether or not anyone is reading), the client gone,
  the broker unreachable, the task lost by the broker (503 at once, not a wait to the deadline);
- ``finish`` counts the request in the metrics and closes its ledger entry (the usage event,
  the settlement) before anything that can fail or wait. When the client left while a worker
  may be generating, the entry is held for ``grace_s`` to receive the worker's report of what it
  produced (``client_cancelled``), then billed with what the gateway knows;
- then the broker clean-up: unless the worker ended the reply, the task is cancelled (in the
  background, so a broker that is down delays and leaks nothing); the relay stops following the
  task once nothing more is expected of it.

The request's ``requestlog.Record`` ends with it: its span at ``finish``, its log line where
its tokens are counted (a held entry's when it closes).

What was served is billed when the worker's own count never comes: one token per chunk of text
handed on for the client, and the prompt estimate once any was.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from starlette.requests import Request

from uplion import protocol
from uplion.gateway import errors, ledger, relay, requestlog
from uplion.gateway.catalog import Route
from uplion.gateway.metrics import FAILURE_REASONS, GatewayMetrics, bounded

VERSION_HEADER = "x-uplion-model-version"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended: its HTTP status (as counted and billed) and why; ``reason``: the
    error's code, when it failed with one."""

    status: int
    why: str
    reason: str | None = None


ANSWERED = Outcome(200, "answered")
TIMED_OUT = Outcome(504, "timed out")
CLIENT_GONE = Outcome(499, "client gone")
BROKER_ERROR = Outcome(503, "broker unreachable")
TASK_LOST = Outcome(503, "task lost by the broker")


def failed(status: int, reason: str | None = None) -> Outcome:
    return Outcome(status, "failed", reason)


class ClientGone(Exception):
    """The client closed its connection before the answer was complete."""


class Call:
    def __init__(
        self, route: Route, task: protocol.Task, entry: ledger.Entry, replies: relay.Relay,
        metrics: GatewayMetrics, clean_up: Callable[[protocol.Task], None], grace_s: float,
        record: requestlog.Record,
    ) -> None:
        self.route = route
        self.task = task
        self.entry = entry
        self.record = record
        self.headers: dict[str, str] = {VERSION_HEADER: route.spec.version}
        self.outcome: Outcome | None = None
        self.served_chunks = 0
        self._relay = replies
        self._metrics = metrics
        self._route_metrics = metrics.route(route.spec.name, route.spec.version,
                                            task.protocol.value)
        self._clean_up = clean_up
        self._grace_s = grace_s
        self._order = relay.Reassembly()
        self._chunks: asyncio.Queue[protocol.Chunk | errors.ApiError] = asyncio.Queue()
        self._started = time.perf_counter()
        self._queue_wait_s: float | None = None
        self._replied = False  # the worker ended the reply: nothing to cancel
        self._deadline = asyncio.get_running_loop().call_later(
            max(0.0, task.deadline - time.time()), self._timed_out)
        replies.follow(task.id, self._offer, self._lost)
        metrics.inflight.set(replies.inflight)

    @property
    def ready(self) -> bool:
        """Whether the next chunk has arrived already (taking it will not wait)."""
        return not self._chunks.empty()

    async def next_chunk(self) -> protocol.Chunk:
        """The next chunk; an error chunk, lost chunks or a passed deadline raise
        ``errors.ApiError``."""
        item = await self._chunks.get()
        if isinstance(item, errors.ApiError):
            raise item
        if item.kind == "error":
            error = item.error or protocol.ErrorInfo("The worker failed without a message.")
            raise errors.ApiError(error, {VERSION_HEADER: self.route.spec.version})
        return item

    async def result(self, request: Request) -> protocol.Chunk:
        """The final chunk of a non-streaming call; ``ClientGone`` if the client leaves first."""
        return await self._watched(request, self._final())

    async def first(self, request: Request) -> protocol.Chunk:
        """A stream's first chunk; ``ClientGone`` if the client leaves first."""
        return await self._watched(request, self.next_chunk())

    async def stream(self) -> AsyncGenerator[protocol.Chunk, None]:
        """Every chunk up to the terminal one; closing it early means the client left."""
        try:
            while self.outcome is None or self.ready:
                chunk = await self.next_chunk()
                yield chunk
                if chunk.terminal:
                    return
        finally:
            self.finish(CLIENT_GONE)

    def finish(self, outcome: Outcome, usage: protocol.Usage | None = None) -> None:
        """End the call: count it, bill it (``usage``, else what reached the client), then let
        go of the task. Synchronous, and only the first call does anything."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.record.finished(outcome.status, outcome.why)
        self._deadline.cancel()
        elapsed = time.perf_counter() - self._started
        spec = self.route.spec
        self._metrics.requests.labels(spec.name, spec.version, self.task.protocol.value,
                                      str(outcome.status)).inc()
        self._route_metrics.latency.observe(elapsed)
        self._route_metrics.live.record(outcome.status, elapsed)
        self._count_end(outcome, elapsed)
        known = usage or self._served()
        if outcome is CLIENT_GONE:
            self.entry.hold(outcome.status, elapsed, known, self._grace_s, self._held_closed)
        else:
            self.entry.close(outcome.status, known, elapsed)
            self._count_tokens(known)
            self.record.billed(known)
            self._relay.forget(self.task.id)
        self._metrics.inflight.set(self._relay.inflight)
        if not self._replied:
            self._clean_up(self.task)

    def _count_end(self, outcome: Outcome, elapsed: float) -> None:
        """The metrics of how it ended: time at the engine, a cancellation, a missed deadline, a
        failure and its reason (a broker that refused the task counts as a refusal instead)."""
        children = self._route_metrics
        if self._queue_wait_s is not None:
            children.engine_time.observe(max(0.0, elapsed - self._queue_wait_s))
        if outcome is CLIENT_GONE:
            children.cancellations.inc()
        elif outcome is TIMED_OUT:
            children.deadline_misses.inc()
        if outcome.status >= 400 and outcome not in (CLIENT_GONE, BROKER_ERROR):
            reason = "timeout" if outcome is TIMED_OUT else outcome.reason
            spec = self.route.spec
            self._metrics.failures.labels(
                spec.name, spec.version, bounded(reason, FAILURE_REASONS)).inc()

    def _served(self) -> protocol.Usage:
        produced = self.served_chunks
        return protocol.Usage(self.entry.estimate.prompt_tokens if produced else 0, produced)

    def _held_closed(self, usage: protocol.Usage) -> None:
        self._count_tokens(usage)
        self.record.billed(usage)
        self._relay.forget(self.task.id)
        self._metrics.inflight.set(self._relay.inflight)

    def _count_tokens(self, usage: protocol.Usage) -> None:
        self._route_metrics.prompt_tokens.inc(usage.prompt_tokens)
        self._route_metrics.completion_tokens.inc(usage.completion_tokens)

    def _offer(self, chunk: protocol.Chunk) -> None:
        """A chunk from the relay: put in order, queued for the handler; an end ends the call."""
        if self.outcome is not None:  # only a held entry waits for the worker's report
            if chunk.terminal:
                self._replied = True
                self.entry.report(chunk.usage or protocol.Usage())
            return
        try:
            accepted = self._order.accept(chunk)
        except relay.ChunksLost as lost:
            self._end_with(failed(502, "reply_chunks_lost"), errors.ApiError(protocol.ErrorInfo(
                f"The answer from `{self.route.spec.name}` is incomplete: {lost}. Retry the "
                "request.", code="reply_chunks_lost", status=502,
            ), {VERSION_HEADER: self.route.spec.version}))
            return
        if accepted is None:
            return
        self.record.saw(accepted)
        if accepted.queue_wait_s is not None:
            self._queue_wait_s = accepted.queue_wait_s
            self._route_metrics.queue_wait.observe(accepted.queue_wait_s)
        self._chunks.put_nowait(accepted)
        if accepted.kind == "data":
            self.served_chunks += 1
        if accepted.terminal:
            self._replied = True
            if accepted.kind == "final":
                self.finish(ANSWERED, accepted.usage or protocol.Usage())
            else:
                status = accepted.error.status if accepted.error else 500
                code = accepted.error.code if accepted.error else None
                self.finish(failed(status, code), accepted.usage)

    def _lost(self) -> None:
        """The broker lost the task (and any reply not read yet): nobody will answer it. The
        cancellation still goes out: a worker that took the task before the loss may be at
        it."""
        self._end_with(TASK_LOST, errors.ApiError(protocol.ErrorInfo(
            f"The request queue lost this request to `{self.route.spec.name}` (Redis restarted "
            "without its data); retry the request.", code="task_lost", status=503,
        ), {"Retry-After": "1", VERSION_HEADER: self.route.spec.version}))

    def _timed_out(self) -> None:
        spec = self.route.spec
        timeout = errors.deadline_exceeded(spec.name, spec.request_timeout_s)
        timeout.headers[VERSION_HEADER] = spec.version
        self._end_with(TIMED_OUT, timeout)

    def _end_with(self, outcome: Outcome, error: errors.ApiError) -> None:
        """End the call for a reason of the gateway's own; the handler raises ``error``."""
        if self.outcome is None:
            self._chunks.put_nowait(error)
            self.finish(outcome)

    async def _final(self) -> protocol.Chunk:
        while True:
            chunk = await self.next_chunk()
            if chunk.terminal:
                return chunk

    async def _watched(self, request: Request, waiting: Awaitable[T]) -> T:
        """``await waiting``; one watcher task listens for the disconnect meanwhile and cancels
        this handler's task if the client goes."""
        handler = asyncio.current_task()
        assert handler is not None
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(request, handler, gone))
        try:
            return await waiting
        except asyncio.CancelledError:
            if not gone.is_set():
                self.finish(CLIENT_GONE)  # cancelled from elsewhere (shutdown): still one end
                raise
            handler.uncancel()
            self.finish(CLIENT_GONE)
            raise ClientGone from None
        finally:
            watcher.cancel()


async def _watch_disconnect(
    request: Request, handler: asyncio.Task[object], gone: asyncio.Event
) -> None:
    """Cancel ``handler`` when the client disconnects (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gone.set()
            handler.cancel()
            return
