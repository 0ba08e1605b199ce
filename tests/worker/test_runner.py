"""The pull loop on the embedded broker: slots bound what a worker takes; stop drains."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from uplion import protocol
from uplion.broker.memory import MemoryBroker
from uplion.models import EngineSpec, ModelSpec
from uplion.worker import Worker
from uplion.worker.engines import base
from uplion.worker.engines.echo import EchoEngine
from uplion.worker.metrics import WorkerMetrics

REPLY_TO = "gw-test"


class GatedEngine(base.Engine):
    """Holds each generation until released, counting how many run at once."""

    def __init__(self) -> None:
        self.info = base.EngineInfo(platform="test")
        self.running = 0
        self.peak = 0
        self.release = asyncio.Event()

    async def _gen(self) -> AsyncIterator[base.TextDelta]:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
            yield base.TextDelta("done", "stop", protocol.Usage(1, 1))
        finally:
            self.running -= 1

    def chat(
        self, messages: list[dict[str, Any]], params: base.GenerationParams
    ) -> AsyncIterator[base.TextDelta]:
        return self._gen()


def spec(concurrency: int = 2) -> ModelSpec:
    return ModelSpec(name="m", engine=EngineSpec(kind="test-echo"), concurrency=concurrency)


def task(task_id: str, text: str = "hi", ttl: float = 30.0) -> protocol.Task:
    now = time.time()
    return protocol.Task(
        id=task_id,
        model="m",
        version="1",
        protocol=protocol.Protocol.OPENAI_CHAT,
        payload={"model": "m", "messages": [{"role": "user", "content": text}]},
        stream=False,
        deadline=now + ttl,
        reply_to=REPLY_TO,
        created=now,
    )


class Replies:
    def __init__(self) -> None:
        self.chunks: list[protocol.Chunk] = []
        self.finals: dict[str, protocol.Chunk] = {}
        self.changed = asyncio.Event()

    def __call__(self, chunk: protocol.Chunk) -> None:
        self.chunks.append(chunk)
        if chunk.terminal:
            self.finals[chunk.task_id] = chunk
        self.changed.set()

    async def wait_for(self, count: int, timeout: float = 5) -> None:
        async with asyncio.timeout(timeout):
            while len(self.finals) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    instance = MemoryBroker()
    await instance.start()
    yield instance
    await instance.close()


async def test_worker_holds_at_most_its_slots(broker: MemoryBroker) -> None:
    replies = Replies()
    await broker.subscribe_replies(REPLY_TO, replies)
    engine = GatedEngine()
    worker = Worker(broker, spec(concurrency=2), engine)
    for index in range(5):
        await broker.publish(worker.topic, task(f"t{index}"))
    run = asyncio.create_task(worker.run())
    await asyncio.sleep(0.2)
    backlog = await broker.backlog(worker.topic, protocol.WORKER_GROUP)
    assert (engine.running, backlog.waiting, backlog.in_flight) == (2, 3, 2)
    engine.release.set()
    await replies.wait_for(5)
    assert engine.peak == 2
    worker.stop()
    await run


async def test_stop_drains_held_tasks_and_leaves_the_rest(broker: MemoryBroker) -> None:
    replies = Replies()
    await broker.subscribe_replies(REPLY_TO, replies)
    engine = GatedEngine()
    worker = Worker(broker, spec(concurrency=2), engine)
    for index in range(4):
        await broker.publish(worker.topic, task(f"t{index}"))
    run = asyncio.create_task(worker.run())
    await asyncio.sleep(0.1)
    worker.stop()
    await asyncio.sleep(0.1)
    assert not run.done()  # still draining the two it holds
    engine.release.set()
    await asyncio.wait_for(run, 5)
    assert sorted(replies.finals) == ["t0", "t1"]
    backlog = await broker.backlog(worker.topic, protocol.WORKER_GROUP)
    assert (backlog.waiting, backlog.in_flight) == (2, 0)


async def test_expired_task_is_dropped_without_running(broker: MemoryBroker) -> None:
    replies = Replies()
    await broker.subscribe_replies(REPLY_TO, replies)
    worker = Worker(broker, spec(), EchoEngine())
    await broker.publish(worker.topic, task("old", ttl=-1))
    await broker.publish(worker.topic, task("new"))
    run = asyncio.create_task(worker.run())
    await replies.wait_for(1)
    await asyncio.sleep(0.1)
    assert list(replies.finals) == ["new"]
    assert replies.finals["new"].data == {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ]
    }
    worker.stop()
    await run
    backlog = await broker.backlog(worker.topic, protocol.WORKER_GROUP)
    assert backlog.total == 0


async def test_cancellation_stops_a_running_task(broker: MemoryBroker) -> None:
    replies = Replies()
    await broker.subscribe_replies(REPLY_TO, replies)
    worker = Worker(broker, spec(), EchoEngine(token_delay_s=0.05))
    long_task = protocol.Task(
        **{
            **{f: getattr(task("long"), f) for f in protocol.Task.__struct_fields__},
            "stream": True,
            "payload": {"model": "m", "messages": [{"role": "user", "content": "w " * 100}]},
        }
    )
    await broker.publish(worker.topic, long_task)
    run = asyncio.create_task(worker.run())
    await asyncio.sleep(0.3)
    await broker.cancel(long_task)
    await asyncio.sleep(0.2)
    produced = len(replies.chunks)
    assert 0 < produced < 20
    assert worker.busy_slots == 0
    await asyncio.sleep(0.2)
    assert len(replies.chunks) == produced
    report = replies.finals["long"]  # what was produced until the cancellation, for billing
    assert report.error is not None
    assert report.error.code == "client_cancelled"
    assert report.usage is not None
    assert report.usage.completion_tokens == produced - 1
    worker.stop()
    await run


async def test_engine_failure_is_an_error_chunk(broker: MemoryBroker) -> None:
    class Broken(EchoEngine):
        def chat(
            self, messages: list[dict[str, Any]], params: base.GenerationParams
        ) -> AsyncIterator[base.TextDelta]:
            raise RuntimeError("boom")

    replies = Replies()
    await broker.subscribe_replies(REPLY_TO, replies)
    worker = Worker(broker, spec(), Broken())
    await broker.publish(worker.topic, task("t"))
    run = asyncio.create_task(worker.run())
    await replies.wait_for(1)
    final = replies.finals["t"]
    assert final.kind == "error"
    assert final.error is not None
    assert (final.error.status, final.error.code) == (500, "engine_error")
    assert "boom" not in final.error.message
    worker.stop()
    await run


async def test_unsupported_request_is_a_400(broker: MemoryBroker) -> None:
    replies = Replies()
    await broker.subscribe_replies(REPLY_TO, replies)
    worker = Worker(broker, spec(), GatedEngine())
    embed = protocol.Task(
        **{
            **{f: getattr(task("e"), f) for f in protocol.Task.__struct_fields__},
            "protocol": protocol.Protocol.OPENAI_EMBEDDING,
            "payload": {"model": "m", "input": "x"},
        }
    )
    await broker.publish(worker.topic, embed)
    run = asyncio.create_task(worker.run())
    await replies.wait_for(1)
    error = replies.finals["e"].error
    assert error is not None
    assert (error.status, error.code) == (400, "model_not_supported")
    worker.stop()
    await run


async def test_the_heartbeat_carries_the_model_s_context_length(broker: MemoryBroker) -> None:
    """The gateway refuses a max_tokens beyond the context the worker reports."""
    engine = EchoEngine()
    info = Worker(broker, spec(), engine).model_info()
    assert engine.info.context_length is not None
    assert info.context_length == engine.info.context_length


class StoppedEngine(GatedEngine):
    """A gated engine that says when a generation of it stops."""

    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()

    async def _gen(self) -> AsyncIterator[base.TextDelta]:
        self.started.set()
        try:
            async for delta in super()._gen():
                yield delta
        finally:
            self.stopped.set()


async def test_a_task_past_its_deadline_is_stopped_and_acknowledged(
    broker: MemoryBroker,
) -> None:
    replies = Replies()
    await broker.subscribe_replies(REPLY_TO, replies)
    engine = StoppedEngine()
    metrics = WorkerMetrics()
    worker = Worker(broker, spec(), engine, metrics=metrics)
    await broker.publish(worker.topic, task("late", ttl=0.5))
    run = asyncio.create_task(worker.run())
    async with asyncio.timeout(5):
        await engine.started.wait()
        await engine.stopped.wait()  # the deadline stopped it: the engine was never released
        worker.stop()
        await run
    assert engine.running == 0
    assert replies.finals == {}  # the gateway answers a request past its deadline itself
    assert metrics.registry.get_sample_value(
        "uplion_worker_tasks_total", {"model": "m", "version": "1", "outcome": "deadline"}
    ) == 1
    backlog = await broker.backlog(worker.topic, protocol.WORKER_GROUP)
    assert (backlog.waiting, backlog.in_flight) == (0, 0)  # acknowledged, not given back
