"""What only the Redis Streams broker has to get right: dead consumers, trimming, real processes."""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio

from tests.redisio.waiting import logged
from uplion import protocol
from uplion.broker import base
from uplion.broker.redis_streams import RedisStreamsBroker

pytestmark = pytest.mark.redis

TOPIC = "model.redis@1"
STREAM = f"uplion:topic:{TOPIC}"
GROUP = "workers"
SRC = Path(__file__).parents[2] / "src"

MakeBroker = Callable[..., Awaitable[RedisStreamsBroker]]


@pytest_asyncio.fixture(loop_scope="function")
async def make_broker(clean_redis: str) -> AsyncIterator[MakeBroker]:
    """Started brokers on the test's Redis (each one stands for a process), closed at the end."""
    made: list[RedisStreamsBroker] = []

    async def make(**options: float) -> RedisStreamsBroker:
        instance = RedisStreamsBroker(clean_redis, **options)
        await instance.start()
        made.append(instance)
        return instance

    yield make
    for instance in made:
        await instance.close()



def make_task(task_id: str, reply_to: str = "gw-test", ttl: float = 30.0) -> protocol.Task:
    return protocol.Task(
        id=task_id, model="redis", version="1", protocol=protocol.Protocol.OPENAI_CHAT,
        payload={"messages": [{"role": "user", "content": task_id}]}, stream=False,
        deadline=time.time() + ttl, reply_to=reply_to, created=time.time(),
    )


async def owners(raw: redis.asyncio.Redis) -> dict[str, str]:
    """Entry id -> consumer, for every entry pending in the group."""
    pending = await raw.xpending_range(STREAM, GROUP, min="-", max="+", count=1000)
    return {entry["message_id"].decode(): entry["consumer"].decode() for entry in pending}


async def test_url_options_configure_the_broker(clean_redis: str) -> None:
    instance = RedisStreamsBroker(f"{clean_redis}?visibility_timeout_s=0.5&task_ttl_s=60")
    assert instance.visibility_timeout_s == 0.5
    await instance.start()
    await instance.publish(TOPIC, make_task("t1"))
    assert await instance.backlog(TOPIC, GROUP) == base.Backlog(waiting=1, in_flight=0)
    await instance.close()
    with pytest.raises(ValueError, match="not a number"):
        RedisStreamsBroker(f"{clean_redis}?task_ttl_s=soon")


async def test_dead_consumers_task_goes_to_another_exactly_once(
    make_broker: MakeBroker, raw: redis.asyncio.Redis
) -> None:
    dying_process = await make_broker(visibility_timeout_s=0.5)
    await dying_process.publish(TOPIC, make_task("t1"))
    [taken] = await dying_process.consumer(TOPIC, GROUP, "dying").take(1, timeout=2)
    await dying_process.close()  # dies: no ack, no release, no more heartbeat

    survivor_process = await make_broker(visibility_timeout_s=0.5)
    survivor = survivor_process.consumer(TOPIC, GROUP, "survivor")
    bystander = survivor_process.consumer(TOPIC, GROUP, "bystander")
    assert await survivor.take(5, timeout=0.2) == []  # not idle long enough yet
    await asyncio.sleep(0.4)
    again = await survivor.take(5, timeout=2)
    assert [(d.task.id, d.receipt) for d in again] == [("t1", taken.receipt)]
    assert await owners(raw) == {taken.receipt: "survivor"}
    # The survivor is alive: nobody takes the task from it, however long it works on it.
    assert await bystander.take(5, timeout=1.2) == []
    assert await survivor.take(5, timeout=0.1) == []
    await survivor.ack(again[0])
    assert await survivor_process.backlog(TOPIC, GROUP) == base.Backlog(waiting=0, in_flight=0)
    await survivor.close()
    await bystander.close()


async def test_live_consumer_keeps_a_task_past_the_visibility_timeout(
    make_broker: MakeBroker, raw: redis.asyncio.Redis
) -> None:
    worker_a = await make_broker(visibility_timeout_s=0.5)
    worker_b = await make_broker(visibility_timeout_s=0.5)
    await worker_a.publish(TOPIC, make_task("long"))
    holder = worker_a.consumer(TOPIC, GROUP, "holder")
    [delivery] = await holder.take(1, timeout=2)
    other = worker_b.consumer(TOPIC, GROUP, "other")
    started = time.monotonic()
    while time.monotonic() - started < 1.5:  # three visibility timeouts
        assert await other.take(5, timeout=0.2) == []
    assert await owners(raw) == {delivery.receipt: "holder"}
    await holder.ack(delivery)
    assert await owners(raw) == {}
    await holder.close()
    await other.close()


async def test_stalled_consumer_does_not_take_back_a_task_taken_over(
    make_broker: MakeBroker, raw: redis.asyncio.Redis
) -> None:
    worker = await make_broker(visibility_timeout_s=0.3)
    await worker.publish(TOPIC, make_task("t1"))
    stalled = worker.consumer(TOPIC, GROUP, "stalled")
    [delivery] = await stalled.take(1, timeout=2)
    # What another worker does once this one looked dead past the timeout.
    await raw.xclaim(STREAM, GROUP, "rescuer", 0, [delivery.receipt], justid=True)
    await asyncio.sleep(0.35)  # more than one heartbeat of the stalled consumer
    assert await owners(raw) == {delivery.receipt: "rescuer"}
    await stalled.release(delivery)  # it is the rescuer's now: nothing given back
    assert await raw.xlen(STREAM) == 1
    await stalled.close()
    assert await owners(raw) == {delivery.receipt: "rescuer"}


async def test_a_task_claimed_from_dead_consumers_counts_its_deliveries(
    make_broker: MakeBroker,
) -> None:
    publisher = await make_broker()
    await publisher.publish(TOPIC, make_task("poison"))
    for attempt in (1, 2, 3):
        process = await make_broker(visibility_timeout_s=0.2)
        consumer = process.consumer(TOPIC, GROUP, f"worker{attempt}")
        deliveries: list[base.Delivery] = []
        while not deliveries:  # a dead consumer's task comes back after the timeout
            deliveries = await consumer.take(1, timeout=0.3)
        assert [(d.task.id, d.attempt) for d in deliveries] == [("poison", attempt)]
        await process.close()  # the worker dies with the task: no ack, no release


async def test_a_stalled_consumer_is_told_it_lost_its_task_and_its_late_ack_removes_nothing(
    make_broker: MakeBroker, raw: redis.asyncio.Redis
) -> None:
    worker = await make_broker(visibility_timeout_s=0.3)
    await worker.publish(TOPIC, make_task("t1"))
    stalled = worker.consumer(TOPIC, GROUP, "stalled")
    lost: asyncio.Queue[str] = asyncio.Queue()
    stalled.on_lost(lost.put_nowait)
    [delivery] = await stalled.take(1, timeout=2)
    # What another worker does once this one looked dead past the timeout.
    await raw.xclaim(STREAM, GROUP, "rescuer", 0, [delivery.receipt], justid=True)
    async with asyncio.timeout(5):
        assert await lost.get() == "t1"  # the heartbeat noticed
    assert await stalled.ack(delivery) is False
    assert await owners(raw) == {delivery.receipt: "rescuer"}
    await stalled.close()
    assert await owners(raw) == {delivery.receipt: "rescuer"}


async def test_a_task_redis_lost_is_not_reported_as_taken_over(
    make_broker: MakeBroker, raw: redis.asyncio.Redis
) -> None:
    worker = await make_broker(visibility_timeout_s=0.3)
    await worker.publish(TOPIC, make_task("t1"))
    consumer = worker.consumer(TOPIC, GROUP, "c1")
    lost: list[str] = []
    consumer.on_lost(lost.append)
    [delivery] = await consumer.take(1, timeout=2)
    with logged("uplion.broker.redis_streams.topics", "is gone from the stream") as gone:
        await raw.flushall()  # Redis restarted empty: nobody else holds it, keep working on it
        await redis_streams_group(raw)
        async with asyncio.timeout(5):
            await gone.wait()  # the next heartbeat
    assert lost == []
    assert await consumer.ack(delivery) is False
    await consumer.close()


async def redis_streams_group(raw: redis.asyncio.Redis) -> None:
    """The group again, as the next consumer to take would create it."""
    await raw.xgroup_create(STREAM, GROUP, id="0", mkstream=True)


async def test_expired_and_cancelled_tasks_are_skipped_and_acked(make_broker: MakeBroker) -> None:
    worker = await make_broker()
    doomed = make_task("cancelled")
    await worker.publish(TOPIC, make_task("expired", ttl=-1))
    await worker.publish(TOPIC, doomed)
    await worker.publish(TOPIC, make_task("live"))
    await worker.cancel(doomed)
    consumer = worker.consumer(TOPIC, GROUP, "c1")
    deliveries = await consumer.take(5, timeout=2)
    assert [d.task.id for d in deliveries] == ["live"]
    assert await worker.backlog(TOPIC, GROUP) == base.Backlog(waiting=0, in_flight=1)
    await consumer.ack(deliveries[0])
    assert await worker.backlog(TOPIC, GROUP) == base.Backlog(waiting=0, in_flight=0)
    await consumer.close()


async def test_garbage_entries_are_skipped(
    make_broker: MakeBroker, raw: redis.asyncio.Redis
) -> None:
    worker = await make_broker()
    await raw.xadd(STREAM, {"t": b"not json"})
    await raw.xadd(STREAM, {"t": b'{"id": 7}'})
    await raw.xadd(STREAM, {"other": b"field"})
    await worker.publish(TOPIC, make_task("good"))
    consumer = worker.consumer(TOPIC, GROUP, "c1")
    deliveries = await consumer.take(10, timeout=2)
    assert [d.task.id for d in deliveries] == ["good"]
    assert list((await owners(raw)).values()) == ["c1"]
    await consumer.ack(deliveries[0])
    await consumer.close()


async def test_trimming_bounds_the_stream_and_keeps_live_tasks(
    make_broker: MakeBroker, raw: redis.asyncio.Redis
) -> None:
    roomy = await make_broker()
    for index in range(150):
        await roomy.publish(TOPIC, make_task(f"kept{index}"))
    assert await raw.xlen(STREAM) == 150  # nothing is trimmed before its time
    await raw.delete(STREAM)

    tight = await make_broker(task_ttl_s=0.3)
    consumer = tight.consumer(TOPIC, GROUP, "c1")
    assert await consumer.take(1, timeout=0.01) == []  # the group exists, nobody reads
    for index in range(350):
        await tight.publish(TOPIC, make_task(f"old{index}", ttl=0.2))
    await asyncio.sleep(0.4)
    live = [make_task(f"live{index}", ttl=0.25) for index in range(3)]
    for task in live:
        await tight.publish(TOPIC, task)
    length = await raw.xlen(STREAM)
    assert length < 100  # whole nodes of old entries went; MINID ~ keeps a partial one
    # Redis would still count the trimmed entries in the group's lag: the broker repairs it.
    assert await tight.backlog(TOPIC, GROUP) == base.Backlog(waiting=length, in_flight=0)
    taken: list[base.Delivery] = []
    while len(taken) < len(live):
        batch = await consumer.take(10, timeout=1)
        assert batch
        taken += batch
    assert [d.task.id for d in taken] == [task.id for task in live]
    assert await tight.backlog(TOPIC, GROUP) == base.Backlog(waiting=0, in_flight=3)
    for delivery in taken:
        await consumer.ack(delivery)
    await consumer.close()


async def test_backlog_after_redelivery_and_release(make_broker: MakeBroker) -> None:
    dying_process = await make_broker(visibility_timeout_s=0.3)
    for index in range(3):
        await dying_process.publish(TOPIC, make_task(f"t{index}"))
    [first] = await dying_process.consumer(TOPIC, GROUP, "dying").take(1, timeout=2)
    assert await dying_process.backlog(TOPIC, GROUP) == base.Backlog(waiting=2, in_flight=1)
    await dying_process.close()

    worker = await make_broker(visibility_timeout_s=0.3)
    consumer = worker.consumer(TOPIC, GROUP, "survivor")
    await asyncio.sleep(0.35)
    [again] = await consumer.take(1, timeout=2)
    assert (again.task.id, again.receipt) == ("t0", first.receipt)
    assert await worker.backlog(TOPIC, GROUP) == base.Backlog(waiting=2, in_flight=1)
    await consumer.ack(again)
    assert await worker.backlog(TOPIC, GROUP) == base.Backlog(waiting=2, in_flight=0)
    [second] = await consumer.take(1, timeout=2)
    await consumer.release(second)  # back of the queue
    assert await worker.backlog(TOPIC, GROUP) == base.Backlog(waiting=2, in_flight=0)
    rest = await consumer.take(5, timeout=2)
    assert [d.task.id for d in rest] == ["t2", "t1"]
    for delivery in rest:
        await consumer.ack(delivery)
    await consumer.close()


async def test_backlog_counts_when_redis_cannot_compute_the_lag(
    make_broker: MakeBroker, raw: redis.asyncio.Redis
) -> None:
    worker = await make_broker()
    consumer = worker.consumer(TOPIC, GROUP, "c1")
    assert await consumer.take(1, timeout=0.01) == []
    async with raw.pipeline(transaction=False) as pipe:
        for index in range(1205):  # more than one page of the count
            pipe.xadd(STREAM, {"t": protocol.encode(make_task(f"t{index}"))})
        ids = await pipe.execute()
    await raw.xdel(STREAM, ids[600])  # a tombstone after the group's position
    [group] = await raw.xinfo_groups(STREAM)
    assert group["lag"] is None
    assert await worker.backlog(TOPIC, GROUP) == base.Backlog(waiting=1204, in_flight=0)
    await consumer.close()


async def test_each_gateway_gets_only_its_replies(make_broker: MakeBroker) -> None:
    gateways = [await make_broker(), await make_broker()]
    worker = await make_broker()
    received: dict[str, list[tuple[str, int]]] = {"gw-1": [], "gw-2": []}
    for address, gateway in zip(received, gateways, strict=True):
        await gateway.subscribe_replies(
            address, lambda chunk, out=received[address]: out.append((chunk.task_id, chunk.seq))
        )
    for seq in range(20):
        await worker.send_reply("gw-1", protocol.Chunk("a", "d", seq, "data"))
        await worker.send_reply("gw-2", protocol.Chunk("b", "d", seq, "data"))
    await wait_for(lambda: len(received["gw-1"]) == len(received["gw-2"]) == 20)
    assert received["gw-1"] == [("a", seq) for seq in range(20)]
    assert received["gw-2"] == [("b", seq) for seq in range(20)]


async def test_replies_sent_right_after_subscribing_arrive(
    make_broker: MakeBroker, raw: redis.asyncio.Redis
) -> None:
    gateway = await make_broker()
    worker = await make_broker(reply_ttl_s=5)
    await worker.send_reply("gw-1", protocol.Chunk("before", "d", 0, "final"))
    received: list[protocol.Chunk] = []
    await gateway.subscribe_replies("gw-1", received.append)
    for seq in range(100):  # no pause: the reader may not even have started
        await worker.send_reply("gw-1", protocol.Chunk("after", "d", seq, "data"))
    await wait_for(lambda: len(received) == 100)
    assert [(c.task_id, c.seq) for c in received] == [("after", s) for s in range(100)]
    assert 0 < await raw.pttl("uplion:reply:gw-1") <= 5000  # a dead gateway's stream goes away


async def test_unread_replies_are_never_trimmed_by_count(
    make_broker: MakeBroker, raw: redis.asyncio.Redis
) -> None:
    """A gateway that reads slowly (or not for a moment) loses none of its live chunks."""
    worker = await make_broker()
    async with raw.pipeline(transaction=False) as pipe:
        for _ in range(100_300):  # chunks of live requests the gateway has not read yet
            pipe.xadd("uplion:reply:gw-1", {"c": b"x"})
        await pipe.execute()
    await worker.send_reply("gw-1", protocol.Chunk("t1", "d", 0, "final"))
    assert await raw.xlen("uplion:reply:gw-1") == 100_301


async def test_reply_streams_drop_what_is_read_and_what_is_past_every_deadline(
    make_broker: MakeBroker, raw: redis.asyncio.Redis
) -> None:
    worker = await make_broker(task_ttl_s=60)
    old_ms = int(time.time() * 1000) - 3_600_000
    for index in range(300):  # three whole stream nodes of chunks an hour old
        await raw.xadd("uplion:reply:gw-1", {"c": b"old"}, id=f"{old_ms}-{index}")
    await worker.send_reply("gw-1", protocol.Chunk("t1", "d", 0, "final"))
    assert await raw.xlen("uplion:reply:gw-1") == 1

    gateway = await make_broker()
    received: list[protocol.Chunk] = []
    await gateway.subscribe_replies("gw-2", received.append)
    async with raw.pipeline(transaction=False) as pipe:
        for seq in range(1_000):
            pipe.xadd("uplion:reply:gw-2", {"c": protocol.encode(protocol.Chunk("t", "d", seq,
                                                                                "data"))})
        await pipe.execute()
    await wait_for(lambda: len(received) == 1_000)
    assert [c.seq for c in received] == list(range(1_000))
    assert await raw.xlen("uplion:reply:gw-2") <= 600  # the reader trimmed what it had read


async def test_readers_survive_a_lost_connection(
    make_broker: MakeBroker, raw: redis.asyncio.Redis
) -> None:
    gateway = await make_broker()
    worker = await make_broker()
    chunks: list[protocol.Chunk] = []
    cancelled: list[str] = []
    await gateway.subscribe_replies("gw-1", chunks.append)
    await worker.subscribe_cancellations(cancelled.append)
    await asyncio.sleep(0.1)  # both readers blocked in Redis
    await raw.client_kill_filter(_type="normal")
    await raw.client_kill_filter(_type="pubsub")
    await worker.send_reply("gw-1", protocol.Chunk("t1", "d", 0, "final"))
    await wait_for(lambda: len(chunks) == 1)
    for _ in range(50):  # a cancellation published while resubscribing is lost: try again
        await gateway.cancel(make_task("t1"))
        if cancelled:
            break
        await asyncio.sleep(0.1)
    assert cancelled[0] == "t1"


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, "timed out"
        await asyncio.sleep(0.01)


# A worker process reduced to the broker: takes up to 4 tasks, works `delay` seconds on each,
# answers with one final chunk (delivery = its name and the receipt) and acks. It prints what it
# takes, so that the test knows when it holds tasks.
WORKER = """
import asyncio, sys
from uplion import protocol
from uplion.broker.redis_streams import RedisStreamsBroker

async def main(url, topic, name, delay):
    broker = RedisStreamsBroker(url, visibility_timeout_s=1.0)
    await broker.start()
    consumer = broker.consumer(topic, "workers", name)
    await consumer.take(1, timeout=0.01)
    print("ready", flush=True)
    while True:
        deliveries = await consumer.take(4, timeout=1.0)
        if deliveries:
            print("took", *[d.task.id for d in deliveries], flush=True)
        for delivery in deliveries:
            await asyncio.sleep(delay)
            chunk = protocol.Chunk(delivery.task.id, f"{name}:{delivery.receipt}", 0, "final")
            await broker.send_reply(delivery.task.reply_to, chunk)
            await consumer.ack(delivery)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
"""


async def spawn_worker(url: str, name: str, delay: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER, url, TOPIC, name, str(delay),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )


async def next_line(process: asyncio.subprocess.Process, word: str) -> list[str]:
    """The words of the next line of ``process`` that starts with ``word``."""
    assert process.stdout is not None
    while True:
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        assert line, f"the worker exited before printing {word!r}"
        words = line.decode().split()
        if words and words[0] == word:
            return words[1:]


async def test_worker_processes_share_tasks_and_survive_a_kill(
    clean_redis: str, make_broker: MakeBroker
) -> None:
    gateway = await make_broker()
    answers: list[protocol.Chunk] = []
    await gateway.subscribe_replies("gw-procs", answers.append)
    victim = await spawn_worker(clean_redis, "victim", delay=0.2)
    survivor = await spawn_worker(clean_redis, "survivor", delay=0.05)
    try:
        await next_line(victim, "ready")
        await next_line(survivor, "ready")
        for index in range(50):
            await gateway.publish(TOPIC, make_task(f"t{index}", reply_to="gw-procs"))
        await next_line(victim, "took")
        held = await next_line(victim, "took")  # its first batch is answered; this one is not
        victim.kill()
        await victim.wait()
        await wait_for(lambda: len({c.task_id for c in answers}) == 50, timeout=15)
    finally:
        for process in (victim, survivor):
            if process.returncode is None:
                process.kill()
            await process.communicate()
    per_task = collections.Counter(c.task_id for c in answers)
    assert set(per_task) == {f"t{index}" for index in range(50)}
    assert max(collections.Counter((c.task_id, c.delivery) for c in answers).values()) == 1
    by = {name: {c.task_id for c in answers if c.delivery.startswith(name + ":")}
          for name in ("victim", "survivor")}
    assert by["victim"]  # both processes worked
    # The victim could answer at most one of the tasks it held in the moment before the kill:
    # the survivor took over the others after the visibility timeout.
    assert len(set(held) & by["survivor"]) >= len(held) - 1
    # A task is answered twice only if the victim died between answering and acking it.
    assert {task for task, count in per_task.items() if count > 1} <= set(held)
