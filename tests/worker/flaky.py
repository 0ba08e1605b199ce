"""The embedded broker with faults to switch on: down (every call raises ``BrokerUnavailable``),
some calls failing (``failing``), deliveries with a chosen attempt count, acks another consumer
won, tasks claimed away."""

from __future__ import annotations

import asyncio
import collections

from uplion import protocol
from uplion.broker import base
from uplion.broker.memory import MemoryBroker, _MemoryConsumer


class FlakyBroker(MemoryBroker):
    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.failing: set[str] = set()
        self.error: type[Exception] = base.BrokerUnavailable
        self.failures: collections.Counter[str] = collections.Counter()
        self.failed = asyncio.Event()
        self.attempts: dict[str, int] = {}
        self.lost_acks: set[str] = set()
        self.acked: list[str] = []
        self.ack_seen = asyncio.Event()
        self.consumers: list[FlakyConsumer] = []

    def check(self, call: str) -> None:
        if self.down or call in self.failing:
            self.failures[call] += 1
            self.failed.set()
            raise self.error(f"{call}: connection refused (the test took it down)")

    async def wait_failures(self, call: str, count: int) -> None:
        async with asyncio.timeout(10):
            while self.failures[call] < count:
                self.failed.clear()
                await self.failed.wait()

    async def wait_acks(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.acked) < count:
                self.ack_seen.clear()
                await self.ack_seen.wait()

    def consumer(self, topic: str, group: str, name: str) -> base.Consumer:
        consumer = FlakyConsumer(self, self._topics[topic])
        self.consumers.append(consumer)
        return consumer

    async def publish(self, topic: str, task: protocol.Task) -> None:
        self.check("publish")
        await super().publish(topic, task)

    async def backlog(self, topic: str, group: str) -> base.Backlog:
        self.check("backlog")
        return await super().backlog(topic, group)

    async def cancel(self, task: protocol.Task) -> None:
        self.check("cancel")
        await super().cancel(task)

    async def send_reply(self, address: str, chunk: protocol.Chunk) -> None:
        self.check("send_reply")
        await super().send_reply(address, chunk)

    async def publish_status(self, status: protocol.WorkerStatus) -> None:
        self.check("publish_status")
        await super().publish_status(status)

    async def subscribe_cancellations(self, handler: base.CancelHandler) -> None:
        self.check("subscribe_cancellations")
        await super().subscribe_cancellations(handler)


class FlakyConsumer(_MemoryConsumer):
    def __init__(self, broker: FlakyBroker, topic: object) -> None:
        super().__init__(broker, topic)  # type: ignore[arg-type]
        self.flaky = broker

    async def take(self, max_count: int, timeout: float) -> list[base.Delivery]:
        self.flaky.check("take")
        taken = await super().take(max_count, timeout)
        self.flaky.check("take")  # a blocking read fails when the connection dies under it
        return [base.Delivery(d.task, d.receipt, self.flaky.attempts.get(d.task.id, 1))
                for d in taken]

    async def ack(self, delivery: base.Delivery) -> bool:
        self.flaky.check("ack")
        owned = await super().ack(delivery)
        self.flaky.acked.append(delivery.task.id)
        self.flaky.ack_seen.set()
        return owned and delivery.task.id not in self.flaky.lost_acks

    async def close(self) -> None:
        if self.flaky.down:  # the contract: close never raises; a down broker keeps what it had
            return
        await super().close()

    def lose(self, task_id: str) -> None:
        """Another consumer claimed ``task_id``: tell the worker, as a broker would."""
        assert self.lost_handler is not None
        self.lost_handler(task_id)
