"""One request's round trip: admit it, publish the task, wait for its chunks, account for it.

Shared by the OpenAI and KServe v2 front ends. Admission (rate limits and quota) reserves the
request's maximum tokens before the task is published. A call ends exactly once: answered,
failed, timed out, or abandoned by its client (then the task is cancelled so workers skip or stop
it). At the end the reservation is settled with the real usage and one usage event goes to
billing, both off the response's path. A stream abandoned midway is charged for the chunks that
reached the client (one token each) plus the prompt estimate. Every answer (a refusal by the limits
aside) is counted in the metrics and the live stats of the model version that gave it, which the
header ``x-uplion-model-version`` names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

from starlette.requests import Request

from uplion import protocol
from uplion.accounts.principal import Principal
from uplion.billing import UsageEvent, UsageStream
from uplion.gateway import admission, errors
from uplion.gateway.admission import Admission
from uplion.gateway.catalog import Route
from uplion.gateway.estimate import Estimate
from uplion.gateway.health import HealthBoard
from uplion.gateway.metrics import GatewayMetrics
from uplion.gateway.relay import DeadlineExceeded, Inflight, Relay

VERSION_HEADER = "x-uplion-model-version"


class ClientGone(Exception):
    """The client closed its connection before the answer was complete."""


class Exchange:
    def __init__(
        self, relay: Relay, metrics: GatewayMetrics, admission: Admission, usage: UsageStream,
        health: HealthBoard,
    ) -> None:
        self.relay = relay
        self.health = health
        self.metrics = metrics
        self.admission = admission
        self.usage = usage
        self._settling: set[asyncio.Task[None]] = set()

    async def call(
        self, route: Route, kind: protocol.Protocol, payload: dict[str, Any], stream: bool,
        caller: Principal, estimate: Estimate,
    ) -> Call:
        """Admit and publish; a Failed model raises ``errors.ApiError`` (503) at once, a refusal
        by the limits a 429 with its headers."""
        model_health = self.health.of(route.spec.name, route.spec.version)
        if model_health.phase == "Failed":
            self.metrics.requests.labels(route.spec.name, route.spec.version, kind.value,
                                         "503").inc()
            self.metrics.route(route.spec.name, route.spec.version, kind.value).live.record(
                503, 0.0)
            raise errors.ApiError(protocol.ErrorInfo(
                f"The model `{route.spec.name}` has failed ({model_health.reason}): "
                f"{model_health.message}", code="model_failed", status=503,
            ), headers={VERSION_HEADER: route.spec.version})
        task_id = protocol.new_task_id()
        decision = await self.admission.admit(caller, task_id, estimate.total)
        if not decision.allowed:
            self.metrics.requests.labels(route.spec.name, route.spec.version, kind.value,
                                         "429").inc()
            raise errors.ApiError(protocol.ErrorInfo(
                decision.message, type="requests" if decision.code == "rate_limit_exceeded"
                else "insufficient_quota", code=decision.code, status=429,
            ), headers=decision.headers)
        now = time.time()
        task = protocol.Task(
            id=task_id, model=route.spec.name, version=route.spec.version,
            protocol=kind, payload=payload, stream=stream,
            deadline=now + route.spec.request_timeout_s, reply_to=self.relay.address,
            tenant=caller.token_id, created=now,
        )
        try:
            inflight = await self.relay.submit(route.topic, task)
        except BaseException:
            await self.admission.settle(caller, task_id, estimate.total, 0)
            raise
        self.metrics.inflight.set(self.relay.inflight)
        headers = {**decision.headers, VERSION_HEADER: route.spec.version}
        if model_health.phase == "Pending":  # cold start: say where the request waits
            backlog = await self.relay.broker.backlog(route.topic, protocol.WORKER_GROUP)
            headers = {**headers, "x-uplion-queue-position": str(backlog.waiting)}
        return Call(self, route, inflight, caller, estimate, headers)

    def settle_later(self, call: Call, status: int, usage: protocol.Usage) -> None:
        """Emit the usage event; settle the reservation in the background if it matters."""
        self.usage.emit(UsageEvent(
            event_id=call.task.id, token_id=call.caller.token_id, user_id=call.caller.user_id,
            model=call.route.spec.name, version=call.route.spec.version,
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            latency_ms=round((time.perf_counter() - call.started) * 1000), status=status,
            at=time.time(),
        ))
        if usage.total_tokens == call.estimate.total or not admission.needs_settlement(
            call.caller
        ):
            return
        settling = asyncio.create_task(self.admission.settle(
            call.caller, call.task.id, call.estimate.total, usage.total_tokens
        ))
        self._settling.add(settling)
        settling.add_done_callback(self._settling.discard)

    async def drain(self) -> None:
        """Wait for pending settlements (on shutdown)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)


class Call:
    def __init__(
        self, exchange: Exchange, route: Route, inflight: Inflight, caller: Principal,
        estimate: Estimate, headers: dict[str, str],
    ) -> None:
        self.exchange = exchange
        self.route = route
        self.inflight = inflight
        self.caller = caller
        self.estimate = estimate
        self.headers = headers
        self.started = time.perf_counter()
        self.usage: protocol.Usage | None = None
        self.delivered_chunks = 0
        self._chunks = inflight.chunks()
        self._ended = False
        self._metrics = exchange.metrics.route(
            route.spec.name, route.spec.version, inflight.task.protocol.value)

    @property
    def task(self) -> protocol.Task:
        return self.inflight.task

    @property
    def ready(self) -> bool:
        """Whether the next chunk has arrived already (taking it will not wait)."""
        return self.inflight.ready

    async def next_chunk(self) -> protocol.Chunk:
        """The next chunk; an error chunk or a passed deadline raises ``errors.ApiError``."""
        try:
            chunk = await anext(self._chunks)
        except DeadlineExceeded:
            await self.inflight.abandon()
            self.end(504)
            timeout = errors.deadline_exceeded(
                self.route.spec.name, self.route.spec.request_timeout_s
            )
            timeout.headers[VERSION_HEADER] = self.route.spec.version
            raise timeout from None
        if chunk.queue_wait_s is not None:
            self._metrics.queue_wait.observe(chunk.queue_wait_s)
        if chunk.kind == "error":
            error = chunk.error or protocol.ErrorInfo("The worker failed without a message.")
            self.end(error.status)
            raise errors.ApiError(error, {VERSION_HEADER: self.route.spec.version})
        if chunk.kind == "final":
            self.usage = chunk.usage
            self.end(200)
        return chunk

    async def result(self, request: Request) -> protocol.Chunk:
        """The final chunk of a non-streaming call; the task is cancelled if the client leaves.

        One watcher task per call listens for the disconnect and cancels this handler's task.
        """
        handler = asyncio.current_task()
        assert handler is not None
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(request, handler, gone))
        try:
            return await self._final()
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
            handler.uncancel()
            await self.abandon()
            raise ClientGone from None
        finally:
            watcher.cancel()

    async def _final(self) -> protocol.Chunk:
        while True:
            chunk = await self.next_chunk()
            if chunk.terminal:
                return chunk

    async def stream(self) -> AsyncGenerator[protocol.Chunk, None]:
        """Every chunk up to the final one; abandoning the iterator cancels the task."""
        try:
            while not self._ended:
                chunk = await self.next_chunk()
                self.delivered_chunks += 1
                yield chunk
        finally:
            if not self._ended:
                await self.abandon()

    async def abandon(self) -> None:
        await self.inflight.abandon()
        self.end(499)

    def end(self, status: int) -> None:
        if self._ended:
            return
        self._ended = True
        metrics = self.exchange.metrics
        spec = self.route.spec
        metrics.requests.labels(spec.name, spec.version, self.task.protocol.value,
                                str(status)).inc()
        elapsed = time.perf_counter() - self.started
        self._metrics.latency.observe(elapsed)
        self._metrics.live.record(status, elapsed)
        metrics.inflight.set(self.exchange.relay.inflight)
        usage = self.usage
        if usage is None:  # no final chunk: charge what reached the client
            produced = self.delivered_chunks
            prompt = self.estimate.prompt_tokens if produced else 0
            usage = protocol.Usage(prompt_tokens=prompt, completion_tokens=produced)
        self._metrics.prompt_tokens.inc(usage.prompt_tokens)
        self._metrics.completion_tokens.inc(usage.completion_tokens)
        self.exchange.settle_later(self, status, usage)


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
