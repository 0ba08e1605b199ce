"""One request's round trip: make the task, publish it, wait for its chunks, record metrics.

Shared by the OpenAI and KServe v2 front ends. A call ends exactly once: answered, failed,
timed out, or abandoned by its client (then the task is cancelled so workers skip or stop it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

from starlette.requests import Request

from uplion import protocol
from uplion.gateway import errors
from uplion.gateway.catalog import Route
from uplion.gateway.metrics import GatewayMetrics
from uplion.gateway.relay import DeadlineExceeded, Inflight, Relay


class ClientGone(Exception):
    """The client closed its connection before the answer was complete."""


class Exchange:
    def __init__(self, relay: Relay, metrics: GatewayMetrics) -> None:
        self.relay = relay
        self.metrics = metrics

    async def call(
        self, route: Route, kind: protocol.Protocol, payload: dict[str, Any], stream: bool,
        tenant: str = "",
    ) -> Call:
        now = time.time()
        task = protocol.Task(
            id=protocol.new_task_id(), model=route.spec.name, version=route.spec.version,
            protocol=kind, payload=payload, stream=stream,
            deadline=now + route.spec.request_timeout_s, reply_to=self.relay.address,
            tenant=tenant, created=now,
        )
        inflight = await self.relay.submit(route.topic, task)
        self.metrics.inflight.set(self.relay.inflight)
        return Call(self, route, inflight)


class Call:
    def __init__(self, exchange: Exchange, route: Route, inflight: Inflight) -> None:
        self.exchange = exchange
        self.route = route
        self.inflight = inflight
        self.started = time.perf_counter()
        self.usage: protocol.Usage | None = None
        self._chunks = inflight.chunks()
        self._ended = False
        self._metrics = exchange.metrics.route(route.spec.name, inflight.task.protocol.value)

    @property
    def task(self) -> protocol.Task:
        return self.inflight.task

    async def next_chunk(self) -> protocol.Chunk:
        """The next chunk; an error chunk or a passed deadline raises ``errors.ApiError``."""
        try:
            chunk = await anext(self._chunks)
        except DeadlineExceeded:
            await self.inflight.abandon()
            self.end(504)
            raise errors.deadline_exceeded(
                self.route.spec.name, self.route.spec.request_timeout_s
            ) from None
        if chunk.queue_wait_s is not None:
            self._metrics.queue_wait.observe(chunk.queue_wait_s)
        if chunk.kind == "error":
            error = chunk.error or protocol.ErrorInfo("The worker failed without a message.")
            self.end(error.status)
            raise errors.ApiError(error)
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
                yield await self.next_chunk()
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
        metrics.requests.labels(self.route.spec.name, self.task.protocol.value, str(status)).inc()
        self._metrics.latency.observe(time.perf_counter() - self.started)
        metrics.inflight.set(self.exchange.relay.inflight)
        if self.usage is not None:
            self._metrics.prompt_tokens.inc(self.usage.prompt_tokens)
            self._metrics.completion_tokens.inc(self.usage.completion_tokens)


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
