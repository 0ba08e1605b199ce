"""The embedded broker: topics, replies and cancellations inside one process (one event loop).

Used by ``uplion run`` on one machine, where gateway and workers share a process. Nothing is
encoded: tasks and chunks pass as objects. A consumer that is closed with tasks still taken gives
them back, so a worker that stops never loses a task. Each task's deliveries are counted (a
release and a close give it back to be delivered again); only the consumer holding a task may
ack or release it. The broker is never unreachable, and tasks are never claimed away from a
consumer, so ``on_lost`` is never called.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time

from uplion import protocol
from uplion.broker import base

# How long a cancelled id is remembered: past any sane deadline.
_CANCEL_MEMORY_S = 3600.0


class _Topic:
    def __init__(self) -> None:
        self.waiting: collections.deque[protocol.Task] = collections.deque()
        self.in_flight: dict[str, protocol.Task] = {}
        self.deliveries: collections.Counter[str] = collections.Counter()
        """Task id -> how many times it was handed to a consumer (until it is acked)."""
        self.arrived = asyncio.Condition()


class MemoryBroker(base.Broker):
    def __init__(self) -> None:
        self._topics: dict[str, _Topic] = collections.defaultdict(_Topic)
        self._reply_handlers: dict[str, base.ChunkHandler] = {}
        self._cancel_handlers: list[base.CancelHandler] = []
        self._cancelled: dict[str, float] = {}
        self._receipts = itertools.count()
        self._statuses: dict[str, protocol.WorkerStatus] = {}
        self._status_handlers: list[base.StatusHandler] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._reply_handlers.clear()
        self._cancel_handlers.clear()
        self._status_handlers.clear()

    async def publish(self, topic: str, task: protocol.Task) -> None:
        state = self._topics[topic]
        state.waiting.append(task)
        async with state.arrived:
            state.arrived.notify()

    def consumer(self, topic: str, group: str, name: str) -> base.Consumer:
        return _MemoryConsumer(self, self._topics[topic])

    async def send_reply(self, address: str, chunk: protocol.Chunk) -> None:
        handler = self._reply_handlers.get(address)
        if handler is not None:
            handler(chunk)

    async def subscribe_replies(self, address: str, handler: base.ChunkHandler) -> None:
        self._reply_handlers[address] = handler

    async def cancel(self, task: protocol.Task) -> None:
        now = time.monotonic()
        self._cancelled[task.id] = now + _CANCEL_MEMORY_S
        if len(self._cancelled) > 10_000:
            self._cancelled = {k: v for k, v in self._cancelled.items() if v > now}
        for handler in list(self._cancel_handlers):
            handler(task.id)

    async def subscribe_cancellations(self, handler: base.CancelHandler) -> None:
        self._cancel_handlers.append(handler)

    async def backlog(self, topic: str, group: str) -> base.Backlog:
        state = self._topics[topic]
        return base.Backlog(waiting=len(state.waiting), in_flight=len(state.in_flight))

    async def publish_status(self, status: protocol.WorkerStatus) -> None:
        self._statuses[status.worker] = status
        for handler in list(self._status_handlers):
            handler(status)

    async def subscribe_status(self, handler: base.StatusHandler) -> None:
        horizon = time.time() - base.STATUS_MEMORY_S
        for status in list(self._statuses.values()):
            if status.at >= horizon:
                handler(status)
        self._status_handlers.append(handler)

    def is_cancelled(self, task_id: str) -> bool:
        return task_id in self._cancelled

    def next_receipt(self) -> str:
        return str(next(self._receipts))


class _MemoryConsumer(base.Consumer):
    def __init__(self, broker: MemoryBroker, topic: _Topic) -> None:
        self._broker = broker
        self._topic = topic
        self._held: set[str] = set()

    async def take(self, max_count: int, timeout: float) -> list[base.Delivery]:
        topic = self._topic
        if not topic.waiting:
            async with topic.arrived:
                try:
                    async with asyncio.timeout(timeout):
                        await topic.arrived.wait_for(lambda: bool(topic.waiting))
                except TimeoutError:
                    return []
        deliveries: list[base.Delivery] = []
        while topic.waiting and len(deliveries) < max_count:
            task = topic.waiting.popleft()
            if self._broker.is_cancelled(task.id):
                continue
            receipt = self._broker.next_receipt()
            topic.in_flight[receipt] = task
            topic.deliveries[task.id] += 1
            self._held.add(receipt)
            deliveries.append(
                base.Delivery(task=task, receipt=receipt, attempt=topic.deliveries[task.id])
            )
        return deliveries

    async def ack(self, delivery: base.Delivery) -> bool:
        if delivery.receipt not in self._held:
            return False
        self._held.discard(delivery.receipt)
        task = self._topic.in_flight.pop(delivery.receipt, None)
        if task is not None:
            self._topic.deliveries.pop(task.id, None)
        return True

    async def release(self, delivery: base.Delivery) -> None:
        if delivery.receipt not in self._held:
            return
        self._held.discard(delivery.receipt)
        task = self._topic.in_flight.pop(delivery.receipt, None)
        if task is not None:
            self._topic.deliveries[task.id] -= 1  # given back, not failed: it does not count
            self._topic.waiting.appendleft(task)
            async with self._topic.arrived:
                self._topic.arrived.notify()

    async def close(self) -> None:
        for receipt in list(self._held):
            task = self._topic.in_flight.get(receipt)
            if task is not None:
                await self.release(base.Delivery(task=task, receipt=receipt))
