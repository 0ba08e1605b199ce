"""The gateway's side of the queue: publish a task, then receive its reply on our own address.

Each gateway instance has one reply address. Chunks arrive there for every task it published and
are routed to the request that waits for them. A task redelivered after its worker died answers
again from ``seq`` 0 under a new ``delivery``: the relay follows the newest delivery and forwards
only chunks past the last one it forwarded, so the client never sees a chunk twice.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from uplion import broker, protocol


class DeadlineExceeded(Exception):
    """No complete reply before the task's deadline."""


class Relay:
    def __init__(self, source: broker.Broker, address: str | None = None) -> None:
        self.broker = source
        self.address = address or f"gw-{uuid.uuid4().hex[:12]}"
        self._waiting: dict[str, Inflight] = {}

    async def start(self) -> None:
        await self.broker.subscribe_replies(self.address, self._on_chunk)

    @property
    def inflight(self) -> int:
        return len(self._waiting)

    async def submit(self, topic: str, task: protocol.Task) -> Inflight:
        """Publish ``task`` and return the handle its reply arrives on."""
        inflight = Inflight(self, task)
        self._waiting[task.id] = inflight
        try:
            await self.broker.publish(topic, task)
        except BaseException:
            self._waiting.pop(task.id, None)
            raise
        return inflight

    def _on_chunk(self, chunk: protocol.Chunk) -> None:
        inflight = self._waiting.get(chunk.task_id)
        if inflight is not None:
            inflight.offer(chunk)

    def forget(self, task_id: str) -> None:
        self._waiting.pop(task_id, None)


class Inflight:
    """One published task awaiting its reply."""

    def __init__(self, relay: Relay, task: protocol.Task) -> None:
        self.relay = relay
        self.task = task
        self._chunks: asyncio.Queue[protocol.Chunk | None] = asyncio.Queue()
        self._delivery: str | None = None
        self._forwarded = -1
        self.done = False

    @property
    def ready(self) -> bool:
        """Whether a chunk is waiting to be taken."""
        return not self._chunks.empty()

    def offer(self, chunk: protocol.Chunk) -> None:
        if chunk.delivery != self._delivery:
            if self._delivery is not None and chunk.seq != 0:
                return  # a late chunk of a delivery that was superseded
            self._delivery = chunk.delivery
        if chunk.seq <= self._forwarded:
            return  # the client already has this position (a redelivery catching up)
        self._forwarded = chunk.seq
        self._chunks.put_nowait(chunk)

    async def chunks(self) -> AsyncIterator[protocol.Chunk]:
        """Chunks in order up to the terminal one; ``DeadlineExceeded`` past the deadline.

        One timer per task (not one per chunk) puts the deadline in the queue, as ``None``.
        """
        delay = self.task.deadline - time.time()
        timer = asyncio.get_running_loop().call_later(delay, self._chunks.put_nowait, None)
        try:
            while True:
                chunk = await self._chunks.get()
                if chunk is None:
                    raise DeadlineExceeded
                if chunk.terminal:
                    self.done = True
                yield chunk
                if chunk.terminal:
                    return
        finally:
            timer.cancel()
            self.relay.forget(self.task.id)

    async def abandon(self) -> None:
        """The client left or the deadline passed: tell workers to skip or stop the task."""
        self.relay.forget(self.task.id)
        if not self.done:
            await self.relay.broker.cancel(self.task)
