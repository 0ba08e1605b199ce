"""The pull loop: a worker takes tasks from its model's topic only when it has a free slot.

There is no dispatcher. Each worker holds ``concurrency`` slots and asks the broker for at most as
many tasks as it has free slots (a slot holds a batch of up to ``max_batch_size`` tasks where the
engine batches: ``batching``). A task is acknowledged after its last chunk is sent; on stop, the
worker takes nothing new, finishes what it holds (drain) and gives back anything it could not
start, so no task is lost.

The broker may go away: every broker call is retried with backoff (``outage``), the model stays
loaded, and the loop resumes when the broker answers again. Replies are sent again until the
task's deadline (the gateway drops a chunk it has already seen). A task delivered more than
``broker.MAX_DELIVERIES`` times (its workers died holding it) is not run: the request fails with
a 502 ``task_redelivered_too_often``. A task claimed by another worker (this one stalled past the
visibility timeout) is stopped and answered no more; a task its client cancelled is stopped and
its reply ends with what was produced until then (``client_cancelled``, for billing).

Every ``HEARTBEAT_S`` the worker announces its status (running, degraded, with its slots, and
what its model says about itself: ``protocol.ModelInfo``, the gateway's v2 metadata). An
unrecoverable engine failure (bad configuration, every upstream key refused) is announced as
``failed`` with its reason, answered to the request that met it with a 503, and stops the worker:
its model fails fast at the gateway instead of failing each request slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

from uplion import broker, protocol, tracing
from uplion.models import ModelSpec
from uplion.models.spec import Serves
from uplion.worker import batching, outage, replies
from uplion.worker.engines import base
from uplion.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

_TAKE_TIMEOUT_S = 1.0
HEARTBEAT_S = 2.0


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


async def announce_failure(
    source: broker.Broker, spec: ModelSpec, name: str, failure: base.Unrecoverable
) -> None:
    """Tell the gateways that ``spec`` cannot be served, when no worker could even start."""
    log.error("model %s@%s failed (%s): %s", spec.name, spec.version, failure.reason,
              failure.message)
    now = time.time()
    await source.publish_status(protocol.WorkerStatus(
        worker=name, model=spec.name, version=spec.version, state="failed",
        slots=spec.concurrency, busy=0, at=now, started=now, reason=failure.reason,
        message=failure.message,
    ))


class Worker:
    def __init__(
        self, source: broker.Broker, spec: ModelSpec, engine: base.Engine, name: str | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.broker = source
        self.metrics = (metrics or WorkerMetrics()).of(spec.name, spec.version)
        self.spec = spec
        self.engine = engine
        self._calls = batching.wrap(spec, engine)  # what requests call: batched where it can
        self.name = name or worker_name()
        self.topic = protocol.topic_for(spec.name, spec.version)
        self._consumer = source.consumer(self.topic, protocol.WORKER_GROUP, self.name)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._answering: set[str] = set()  # tasks a cancellation may still stop
        self._stopped: dict[str, str] = {}  # task id -> why it was stopped: "client" or "lost"
        self._outage = outage.Outage(log, self.name)
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._deliveries = 0
        self.completed = 0
        self.failure: base.Unrecoverable | None = None
        self.started = time.time()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def busy_slots(self) -> int:
        return len(self._running)

    @property
    def capacity(self) -> int:
        """Tasks held at most: a slot holds a batch where the engine batches this model's calls;
        never more than the engine holds at once (``info.max_concurrency``: the KV cache
        budget of a continuously batched text generation)."""
        held = self.spec.concurrency * batching.batch_size(self.spec, self.engine, self.serves)
        bound = self.engine.info.max_concurrency
        return held if bound is None else max(1, min(held, bound))

    @property
    def serves(self) -> Serves:
        """What the model serves: the spec's word, else what the engine found in the artifact,
        else text generation (engines that name nothing: chat and completions)."""
        return self.spec.serves or self.engine.info.serves or "text-generation"

    def model_info(self) -> protocol.ModelInfo:
        """What the heartbeat says about the loaded model (its v2 metadata at the gateway)."""
        info = self.engine.info
        inputs, outputs = replies.declared_tensors(info, self.serves)
        return protocol.ModelInfo(
            serves=self.serves, device=info.device, platform=info.platform,
            context_length=info.context_length,
            inputs=tuple(protocol.TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in inputs),
            outputs=tuple(protocol.TensorInfo(t.name, t.datatype, tuple(t.shape))
                          for t in outputs),
        )

    async def run(self) -> None:
        """Take and answer tasks until ``stop`` is called (or the engine fails); then drain."""
        self._consumer.on_lost(self._on_lost)
        await self._until_done("follow cancellations",
                               lambda: self.broker.subscribe_cancellations(self._on_cancel))
        log.info("worker %s serving %s with %d slots (up to %d tasks at once)", self.name,
                 self.topic, self.spec.concurrency, self.capacity)
        heartbeat = asyncio.create_task(self._heartbeat(), name=f"heartbeat-{self.name}")
        backoff = outage.Backoff()
        self.metrics.slots.inc(self.capacity)
        try:
            while not self._stopping.is_set():
                free = self.capacity - len(self._running)
                if free <= 0:
                    self._slot_freed.clear()
                    await self._wait_any(self._slot_freed)
                    continue
                # A stop is noticed when the take returns, within _TAKE_TIMEOUT_S: interrupting a
                # take could strand tasks the broker handed out but the worker never saw.
                try:
                    deliveries = await self._consumer.take(free, _TAKE_TIMEOUT_S)
                except Exception as error:  # the broker is down: wait it out, model loaded
                    self._outage.failed("take tasks", error)
                    await self._pause(backoff.next())
                    continue
                backoff.reset()
                self._outage.over()
                if deliveries:
                    self.metrics.batch.observe(len(deliveries))
                for delivery in deliveries:
                    if self._stopping.is_set():
                        await self._release(delivery)
                    else:
                        self._start(delivery)
        finally:
            heartbeat.cancel()
            await self._drain()
            self.metrics.slots.dec(self.capacity)
            await self._announce_quietly("failed" if self.failure else "stopped")

    async def fail(self, failure: base.Unrecoverable) -> None:
        """The engine cannot serve: announce it and stop taking tasks."""
        if self.failure is None:
            log.error("model %s@%s failed (%s): %s", self.spec.name, self.spec.version,
                      failure.reason, failure.message)
        self.failure = failure
        self.stop()
        await self._announce_quietly("failed")

    async def _until_done(self, doing: str, call: Callable[[], Awaitable[None]]) -> None:
        """Run ``call`` until the broker takes it (or the worker stops)."""
        backoff = outage.Backoff()
        while not self._stopping.is_set():
            try:
                await call()
            except Exception as error:
                self._outage.failed(doing, error)
                await self._pause(backoff.next())
            else:
                self._outage.over()
                return

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the worker is stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _heartbeat(self) -> None:
        while True:
            try:
                health = self.engine.health()
            except base.Unrecoverable as failure:
                await self.fail(failure)
                return
            state: protocol.WorkerState = "running" if health.state == "ok" else "degraded"
            await self._announce_quietly(state, message=health.message)
            await asyncio.sleep(HEARTBEAT_S)

    async def _announce_quietly(
        self, state: protocol.WorkerState, message: str | None = None
    ) -> None:
        """Announce the worker's status; a broker that cannot take it is an outage, not a fault
        (the next heartbeat says it again)."""
        try:
            await self._announce(state, message)
        except Exception as error:
            self._outage.failed("announce its status", error)

    async def _announce(self, state: protocol.WorkerState, message: str | None = None) -> None:
        failure = self.failure
        await self.broker.publish_status(protocol.WorkerStatus(
            worker=self.name, model=self.spec.name, version=self.spec.version, state=state,
            slots=self.capacity, busy=len(self._running), at=time.time(),
            started=self.started,
            reason=failure.reason if failure else None,
            message=failure.message if failure else message, info=self.model_info(),
        ))

    def stop(self) -> None:
        """Take nothing new; ``run`` returns once held tasks are answered."""
        self._stopping.set()

    async def _wait_any(self, event: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stopping.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()

    async def _drain(self) -> None:
        if self._running:
            log.info("worker %s draining %d tasks", self.name, len(self._running))
            await asyncio.gather(*self._running.values(), return_exceptions=True)
        await self._consumer.close()
        log.info("worker %s stopped after %d tasks", self.name, self.completed)

    def _start(self, delivery: broker.Delivery) -> None:
        task_id = delivery.task.id
        running = asyncio.create_task(self._traced(delivery), name=f"task-{task_id}")
        self._running[task_id] = running
        self.metrics.busy.inc()
        running.add_done_callback(lambda _: self._finished(task_id))

    def _finished(self, task_id: str) -> None:
        self._running.pop(task_id, None)
        self.metrics.busy.dec()
        self.completed += 1
        self._slot_freed.set()

    def _on_cancel(self, task_id: str) -> None:
        if self._stop(task_id, "client"):
            log.info("task %s cancelled by its client", task_id)

    def _on_lost(self, task_id: str) -> None:
        if self._stop(task_id, "lost"):
            log.warning("task %s was claimed by another worker (this one stalled past the "
                        "visibility timeout); stopping it", task_id)

    def _stop(self, task_id: str, why: str) -> bool:
        """Stop answering ``task_id`` (if it still is answered here, and not stopped already)."""
        running = self._running.get(task_id)
        if running is None or task_id not in self._answering or task_id in self._stopped:
            return False
        self._stopped[task_id] = why
        running.cancel()
        return True

    async def _traced(self, delivery: broker.Delivery) -> None:
        """``_handle`` under the task's worker span, after its span on the queue."""
        task = delivery.task
        with tracing.delivered(task.traceparent, task.created, {
            "uplion.task_id": task.id, "uplion.model": task.model,
            "uplion.model_version": task.version, "uplion.worker": self.name,
            "uplion.attempt": delivery.attempt, "messaging.destination.name": self.topic,
        }):
            await self._handle(delivery)

    async def _handle(self, delivery: broker.Delivery) -> None:
        task = delivery.task
        self._deliveries += 1
        sender = _Sender(self.broker, delivery, f"{self.name}/{self._deliveries}", self._outage)
        progress = replies.Progress()
        started, outcome = time.monotonic(), "answered"
        if delivery.attempt > 1:
            self.metrics.redelivered.inc()
        self._answering.add(task.id)
        try:
            if delivery.attempt > broker.MAX_DELIVERIES:
                log.warning("task %s was delivered %d times without an answer; failing it",
                            task.id, delivery.attempt - 1)
                await sender.fail(_redelivered_too_often(delivery.attempt - 1))
            elif task.expired():
                outcome = "expired"
                log.info("task %s expired in the queue; dropped", task.id)
            else:
                async with asyncio.timeout(task.deadline - time.time()):  # no task of its own
                    await self._answer(task, sender, progress)
        except asyncio.CancelledError:
            self._answering.discard(task.id)
            why = self._stopped.pop(task.id, None)
            if why is None:
                # Interrupted by shutdown, not by the client: another worker answers it.
                outcome = "released"
                await self._release(delivery)
                raise
            running = asyncio.current_task()
            assert running is not None
            running.uncancel()
            outcome = "lost" if why == "lost" else "cancelled"
            if why == "lost":  # another worker answers it now: send nothing, keep off
                return
            await self._report_cancelled(sender, progress.usage)
        except TimeoutError:
            outcome = "deadline"
            log.info("task %s passed its deadline while running", task.id)
        except _Undeliverable as error:
            outcome = "failed"
            log.warning("task %s: %s", task.id, error)
        finally:
            self.metrics.ended("failed" if outcome == "answered" and sender.errored else outcome)
            self.metrics.generated(started, progress.first_token_at, progress.usage)
        self._answering.discard(task.id)
        self._stopped.pop(task.id, None)  # a stop that came as the answer ended
        await self._ack(delivery)

    async def _report_cancelled(self, sender: _Sender, usage: protocol.Usage) -> None:
        """End the reply with what was produced, so that the gateway bills it (it waits for
        this ``CANCEL_REPORT_GRACE_S``; the send is retried no longer than that)."""
        try:
            await sender.fail(protocol.ErrorInfo(
                "The client cancelled the request.", type="cancelled", code="client_cancelled",
                status=499,
            ), usage=usage, within_s=protocol.CANCEL_REPORT_GRACE_S)
        except _Undeliverable as error:
            log.warning("task %s: %s", sender.task.id, error)

    async def _ack(self, delivery: broker.Delivery) -> None:
        try:
            owned = await self._consumer.ack(delivery)
        except Exception as error:
            self._outage.failed("acknowledge a task", error)
            log.warning("task %s: the ack failed (%s); the broker may deliver it again, and "
                        "its gateway ignores a second answer", delivery.task.id, error)
            return
        if not owned:
            log.warning("task %s was answered, but another worker owns it now (this one "
                        "stalled past the visibility timeout); the ack is ignored",
                        delivery.task.id)

    async def _release(self, delivery: broker.Delivery) -> None:
        try:
            await self._consumer.release(delivery)
        except Exception as error:
            self._outage.failed("give a task back", error)
            log.warning("task %s could not be given back (%s); the broker delivers it again "
                        "after its visibility timeout", delivery.task.id, error)

    async def _answer(
        self, task: protocol.Task, sender: _Sender, progress: replies.Progress
    ) -> None:
        sender.queue_wait_s = max(0.0, time.time() - task.created)
        try:
            with tracing.span("uplion.engine",
                              {"uplion.engine": type(self.engine).__name__}) as engine_span:
                async for part in replies.answer(self._calls, task, self.serves, progress):
                    await sender.send(part)
                engine_span.set_attribute("gen_ai.usage.input_tokens",
                                          progress.usage.prompt_tokens)
                engine_span.set_attribute("gen_ai.usage.output_tokens",
                                          progress.usage.completion_tokens)
        except base.Unsupported as exc:
            await sender.fail(protocol.ErrorInfo(
                f"The model `{self.spec.name}` does not support {exc}.",
                type="invalid_request_error", code="model_not_supported", status=400,
            ))
        except base.EngineError as exc:
            await sender.fail(exc.error)
        except base.Unrecoverable as failure:
            await sender.fail(protocol.ErrorInfo(
                f"The model `{self.spec.name}` has failed ({failure.reason}): {failure.message}",
                code="model_failed", status=503,
            ))
            await self.fail(failure)
        except _Undeliverable:
            raise
        except Exception:
            log.exception("task %s failed in engine %s", task.id, type(self.engine).__name__)
            await sender.fail(protocol.ErrorInfo(
                "The model failed to answer this request; the error is in the worker's log.",
                code="engine_error",
            ))


def _redelivered_too_often(times: int) -> protocol.ErrorInfo:
    return protocol.ErrorInfo(
        f"The task was delivered {times} times and its workers never answered (each one "
        "stopped while holding it: a crash, an out-of-memory kill or a lost node); it is not "
        "run again. The request may be too large for the model's workers.",
        code="task_redelivered_too_often", status=502,
    )


class _Undeliverable(Exception):
    """A reply could not be sent before its deadline: the broker stayed unreachable."""


class _Sender:
    """Numbers the chunks of one delivery and sends them to the task's gateway, again and again
    while the broker is unreachable, until the task's deadline (a chunk that did arrive before a
    failed send is dropped as a repeat by the gateway)."""

    def __init__(
        self, target: broker.Broker, delivery: broker.Delivery, name: str,
        broker_outage: outage.Outage,
    ) -> None:
        self.broker = target
        self.task = delivery.task
        self.attempt = delivery.attempt
        self.delivery = name
        self.outage = broker_outage
        self.seq = 0
        self.queue_wait_s: float | None = None
        self.began = time.monotonic()
        self.errored = False  # an error chunk was sent

    async def send(self, part: replies.Part) -> None:
        kind: protocol.ChunkKind = "final" if part.final else "data"
        await self._emit(protocol.Chunk(
            self.task.id, self.delivery, self.seq, kind, data=part.data, usage=part.usage,
            queue_wait_s=self.queue_wait_s if self.seq == 0 else None, attempt=self.attempt,
            engine_s=time.monotonic() - self.began if part.final else None,
        ), self.task.deadline)

    async def fail(
        self, error: protocol.ErrorInfo, usage: protocol.Usage | None = None,
        within_s: float | None = None,
    ) -> None:
        until = self.task.deadline if within_s is None else time.time() + within_s
        self.errored = True
        await self._emit(protocol.Chunk(
            self.task.id, self.delivery, self.seq, "error", error=error, usage=usage,
            queue_wait_s=self.queue_wait_s if self.seq == 0 else None, attempt=self.attempt,
            engine_s=time.monotonic() - self.began,
        ), until)

    async def _emit(self, chunk: protocol.Chunk, until: float) -> None:
        backoff = outage.Backoff()
        while True:
            try:
                await self.broker.send_reply(self.task.reply_to, chunk)
            except Exception as error:
                self.outage.failed("send a reply", error)
                delay = backoff.next()
                if time.time() + delay >= until:
                    raise _Undeliverable(
                        f"a reply chunk could not be sent in time: the broker stayed "
                        f"unreachable ({error})"
                    ) from error
                await asyncio.sleep(delay)
            else:
                self.seq += 1
                return
