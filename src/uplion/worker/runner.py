"""The pull loop: a worker takes tasks from its model's topic only when it has a free slot.

There is no dispatcher. Each worker holds ``concurrency`` slots and asks the broker for at most as
many tasks as it has free slots. A task is acknowledged after its last chunk is sent; on stop, the
worker takes nothing new, finishes what it holds (drain) and gives back anything it could not
start, so no task is lost.

Every ``HEARTBEAT_S`` the worker announces its status (running, degraded, with its slots, and
what its model says about itself: ``protocol.ModelInfo``, the gateway's v2 metadata). An
unrecoverable engine failure (bad configuration, every upstream key refused) is announced as
``failed`` with its reason, answered to the request that met it with a 503, and stops the worker:
its model fails fast at the gateway instead of failing each request slowly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

from uplion import broker, protocol
from uplion.models import ModelSpec
from uplion.models.spec import Serves
from uplion.worker import replies
from uplion.worker.engines import base

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
        self, source: broker.Broker, spec: ModelSpec, engine: base.Engine, name: str | None = None
    ) -> None:
        self.broker = source
        self.spec = spec
        self.engine = engine
        self.name = name or worker_name()
        self.topic = protocol.topic_for(spec.name, spec.version)
        self._consumer = source.consumer(self.topic, protocol.WORKER_GROUP, self.name)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._client_cancelled: set[str] = set()
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
            inputs=tuple(protocol.TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in inputs),
            outputs=tuple(protocol.TensorInfo(t.name, t.datatype, tuple(t.shape))
                          for t in outputs),
        )

    async def run(self) -> None:
        """Take and answer tasks until ``stop`` is called (or the engine fails); then drain."""
        await self.broker.subscribe_cancellations(self._on_cancel)
        log.info("worker %s serving %s with %d slots", self.name, self.topic, self.spec.concurrency)
        heartbeat = asyncio.create_task(self._heartbeat(), name=f"heartbeat-{self.name}")
        try:
            while not self._stopping.is_set():
                free = self.spec.concurrency - len(self._running)
                if free <= 0:
                    self._slot_freed.clear()
                    await self._wait_any(self._slot_freed)
                    continue
                # A stop is noticed when the take returns, within _TAKE_TIMEOUT_S: interrupting a
                # take could strand tasks the broker handed out but the worker never saw.
                deliveries = await self._consumer.take(free, _TAKE_TIMEOUT_S)
                for delivery in deliveries:
                    if self._stopping.is_set():
                        await self._consumer.release(delivery)
                    else:
                        self._start(delivery)
        finally:
            heartbeat.cancel()
            await self._drain()
            await self._announce("failed" if self.failure else "stopped")

    async def fail(self, failure: base.Unrecoverable) -> None:
        """The engine cannot serve: announce it and stop taking tasks."""
        if self.failure is None:
            log.error("model %s@%s failed (%s): %s", self.spec.name, self.spec.version,
                      failure.reason, failure.message)
        self.failure = failure
        self.stop()
        await self._announce("failed")

    async def _heartbeat(self) -> None:
        while True:
            try:
                health = self.engine.health()
            except base.Unrecoverable as failure:
                await self.fail(failure)
                return
            state: protocol.WorkerState = "running" if health.state == "ok" else "degraded"
            try:
                await self._announce(state, message=health.message)
            except Exception as error:  # a broker hiccup must not stop the worker
                log.warning("worker %s could not announce its status: %s", self.name, error)
            await asyncio.sleep(HEARTBEAT_S)

    async def _announce(self, state: protocol.WorkerState, message: str | None = None) -> None:
        failure = self.failure
        await self.broker.publish_status(protocol.WorkerStatus(
            worker=self.name, model=self.spec.name, version=self.spec.version, state=state,
            slots=self.spec.concurrency, busy=len(self._running), at=time.time(),
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
        running = asyncio.create_task(self._handle(delivery), name=f"task-{task_id}")
        self._running[task_id] = running
        running.add_done_callback(lambda _: self._finished(task_id))

    def _finished(self, task_id: str) -> None:
        self._running.pop(task_id, None)
        self.completed += 1
        self._slot_freed.set()

    def _on_cancel(self, task_id: str) -> None:
        running = self._running.get(task_id)
        if running is not None:
            log.info("task %s cancelled by its client", task_id)
            self._client_cancelled.add(task_id)
            running.cancel()

    async def _handle(self, delivery: broker.Delivery) -> None:
        task = delivery.task
        self._deliveries += 1
        sender = _Sender(self.broker, task, f"{self.name}/{self._deliveries}")
        try:
            if task.expired():
                log.info("task %s expired in the queue; dropped", task.id)
            else:
                await asyncio.wait_for(self._answer(task, sender), task.deadline - time.time())
        except asyncio.CancelledError:
            if task.id not in self._client_cancelled:
                # Interrupted by shutdown, not by the client: another worker answers it.
                await self._consumer.release(delivery)
                raise
            self._client_cancelled.discard(task.id)
        except TimeoutError:
            log.info("task %s passed its deadline while running", task.id)
        await self._consumer.ack(delivery)

    async def _answer(self, task: protocol.Task, sender: _Sender) -> None:
        sender.queue_wait_s = max(0.0, time.time() - task.created)
        try:
            async for part in replies.answer(self.engine, task, self.serves):
                await sender.send(part)
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
        except Exception:
            log.exception("task %s failed in engine %s", task.id, type(self.engine).__name__)
            await sender.fail(protocol.ErrorInfo(
                "The model failed to answer this request; the error is in the worker's log.",
                code="engine_error",
            ))


class _Sender:
    """Numbers the chunks of one delivery and sends them to the task's gateway."""

    def __init__(self, target: broker.Broker, task: protocol.Task, delivery: str) -> None:
        self.broker = target
        self.task = task
        self.delivery = delivery
        self.seq = 0
        self.queue_wait_s: float | None = None

    async def send(self, part: replies.Part) -> None:
        kind: protocol.ChunkKind = "final" if part.final else "data"
        await self._emit(protocol.Chunk(
            self.task.id, self.delivery, self.seq, kind, data=part.data, usage=part.usage,
            queue_wait_s=self.queue_wait_s if self.seq == 0 else None,
        ))

    async def fail(self, error: protocol.ErrorInfo) -> None:
        await self._emit(protocol.Chunk(
            self.task.id, self.delivery, self.seq, "error", error=error,
            queue_wait_s=self.queue_wait_s if self.seq == 0 else None,
        ))

    async def _emit(self, chunk: protocol.Chunk) -> None:
        await self.broker.send_reply(self.task.reply_to, chunk)
        self.seq += 1
