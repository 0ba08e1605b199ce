"""A worker outlives its broker's faults: outages, failed sends, poison tasks, lost ownership,
and it reports what a cancelled task produced."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from tests.worker.counting import CountingEcho
from tests.worker.flaky import FlakyBroker
from tests.worker.test_runner import REPLY_TO, GatedEngine, Replies, spec, task
from uplion import broker as brokers
from uplion import protocol
from uplion.worker import Worker
from uplion.worker.engines.echo import EchoEngine


@pytest.fixture
async def broker() -> AsyncIterator[FlakyBroker]:
    instance = FlakyBroker()
    await instance.start()
    yield instance
    await instance.close()


@pytest.fixture
async def replies(broker: FlakyBroker) -> Replies:
    collected = Replies()
    await broker.subscribe_replies(REPLY_TO, collected)
    return collected


async def handled(task_id: str) -> None:
    """Until the worker's handling of ``task_id`` (its asyncio task) has ended."""
    handling = [t for t in asyncio.all_tasks() if t.get_name() == f"task-{task_id}"]
    async with asyncio.timeout(5):
        await asyncio.wait(handling)


def streamed(task_id: str, words: int) -> protocol.Task:
    base = task(task_id, " ".join(f"w{i}" for i in range(words)))
    return protocol.Task(**{**{f: getattr(base, f) for f in protocol.Task.__struct_fields__},
                            "stream": True})


@pytest.mark.parametrize("error", [brokers.BrokerUnavailable, ConnectionResetError])
async def test_a_broker_outage_is_waited_out_with_the_model_kept(
    broker: FlakyBroker, replies: Replies, error: type[Exception],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker.error = error
    engine = EchoEngine()
    worker = Worker(broker, spec(), engine)
    run = asyncio.create_task(worker.run())
    await broker.publish(worker.topic, task("before"))
    await replies.wait_for(1)
    with caplog.at_level(logging.INFO, logger="uplion.worker"):
        broker.down = True
        await broker.wait_failures("take", 4)
        assert not run.done()
        broker.down = False
        await broker.publish(worker.topic, task("after"))
        await replies.wait_for(2)
    assert worker.engine is engine
    assert not run.done()
    outage = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage) == 1  # once per outage, not once per retry
    assert outage[0].levelno == logging.WARNING
    assert sum("reachable again" in r.getMessage() for r in caplog.records) == 1
    worker.stop()
    await run


async def test_replies_that_fail_to_send_are_sent_again(
    broker: FlakyBroker, replies: Replies
) -> None:
    engine = CountingEcho(token_delay_s=0.02, after=2)
    worker = Worker(broker, spec(), engine)
    run = asyncio.create_task(worker.run())
    await broker.publish(worker.topic, streamed("s", 8))
    await engine.reached.wait()
    broker.down = True
    await broker.wait_failures("send_reply", 2)
    broker.down = False
    await replies.wait_for(1)
    chunks = [c for c in replies.chunks if c.task_id == "s"]
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    text = "".join(c.data["choices"][0]["delta"].get("content", "") for c in chunks if c.data)
    assert text == " ".join(f"w{i}" for i in range(8))
    assert chunks[-1].kind == "final"
    worker.stop()
    await run


async def test_stop_returns_while_the_broker_is_down(broker: FlakyBroker) -> None:
    replies = Replies()
    await broker.subscribe_replies(REPLY_TO, replies)
    worker = Worker(broker, spec(), EchoEngine())
    run = asyncio.create_task(worker.run())
    await broker.publish(worker.topic, task("t"))
    await replies.wait_for(1)
    broker.down = True
    await broker.wait_failures("take", 1)
    worker.stop()
    async with asyncio.timeout(5):
        await run  # no exception: the last status and the consumer's close tolerate the outage


async def test_a_broker_down_at_start_is_waited_for(
    broker: FlakyBroker, replies: Replies
) -> None:
    broker.down = True
    worker = Worker(broker, spec(), EchoEngine())
    run = asyncio.create_task(worker.run())
    await broker.wait_failures("subscribe_cancellations", 2)
    broker.down = False
    await broker.publish(worker.topic, task("t"))
    await replies.wait_for(1)
    worker.stop()
    await run


async def test_a_task_delivered_too_often_is_failed_not_run(
    broker: FlakyBroker, replies: Replies
) -> None:
    broker.attempts["poison"] = brokers.MAX_DELIVERIES + 1
    engine = GatedEngine()
    worker = Worker(broker, spec(), engine)
    run = asyncio.create_task(worker.run())
    await broker.publish(worker.topic, task("poison"))
    await replies.wait_for(1)
    final = replies.finals["poison"]
    assert final.kind == "error"
    assert final.error is not None
    assert (final.error.status, final.error.code) == (502, "task_redelivered_too_often")
    assert f"delivered {brokers.MAX_DELIVERIES} times" in final.error.message
    assert engine.peak == 0  # never run
    await broker.wait_acks(1)
    assert broker.acked == ["poison"]
    backlog = await broker.backlog(worker.topic, protocol.WORKER_GROUP)
    assert backlog.total == 0
    worker.stop()
    await run


async def test_an_ack_another_consumer_won_is_logged_and_ignored(
    broker: FlakyBroker, replies: Replies, caplog: pytest.LogCaptureFixture
) -> None:
    broker.lost_acks.add("t1")
    worker = Worker(broker, spec(), EchoEngine())
    run = asyncio.create_task(worker.run())
    with caplog.at_level(logging.WARNING, logger="uplion.worker"):
        await broker.publish(worker.topic, task("t1"))
        await broker.publish(worker.topic, task("t2"))
        await replies.wait_for(2)
        await broker.wait_acks(2)
    assert any("t1" in r.getMessage() and "another worker" in r.getMessage()
               for r in caplog.records)
    assert not run.done()
    worker.stop()
    await run


async def test_a_task_claimed_away_is_stopped_and_answered_no_more(
    broker: FlakyBroker, replies: Replies
) -> None:
    engine = CountingEcho(token_delay_s=0.02, after=2)
    worker = Worker(broker, spec(), engine)
    run = asyncio.create_task(worker.run())
    await broker.publish(worker.topic, streamed("long", 200))
    await engine.reached.wait()
    broker.consumers[0].lose("long")
    await handled("long")
    assert engine.produced < 200
    assert "long" not in replies.finals
    assert broker.acked == []  # neither acked nor released: the other consumer owns it
    backlog = await broker.backlog(worker.topic, protocol.WORKER_GROUP)
    assert (backlog.waiting, backlog.in_flight) == (0, 1)
    worker.stop()
    await run


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_cancel_reports_what_was_produced(
    broker: FlakyBroker, replies: Replies, stream: bool
) -> None:
    engine = CountingEcho(token_delay_s=0.02, after=3)
    worker = Worker(broker, spec(), engine)
    run = asyncio.create_task(worker.run())
    cancelled = streamed("c", 40) if stream else task("c", " ".join(["w"] * 40))
    await broker.publish(worker.topic, cancelled)
    await engine.reached.wait()
    await broker.cancel(cancelled)
    await replies.wait_for(1)
    report = replies.finals["c"]
    assert report.kind == "error"
    assert report.error is not None
    assert (report.error.status, report.error.code) == (499, "client_cancelled")
    assert report.usage is not None
    assert report.usage.completion_tokens == engine.produced >= 3
    assert engine.produced < 40
    await broker.wait_acks(1)
    assert broker.acked == ["c"]
    worker.stop()
    await run
