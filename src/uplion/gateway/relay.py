"""The gateway's side of the queue's replies: route each chunk to its request, in order.

Each gateway instance has one reply address. Chunks arrive there for every task it published;
``Relay`` hands each to the handler registered for its task (the request's ``Call``) and drops
those of tasks it no longer follows. When the broker reports that it lost what it held (a Redis
restarted without its data), the relay tells each task published before the loss that it is
lost: no worker will ever answer it.

``Reassembly`` holds the rules of one task's reply. A task redelivered after its worker died
answers again from ``seq`` 0 under a new ``delivery`` and a higher ``attempt``:

- the reply follows the newest delivery (the highest attempt; on a tie, a delivery that starts
  after the current one, e.g. a task a stopping worker gave back). A chunk of a delivery it left
  is dropped, even a new start: a stalled worker that wakes up never reaches the client again;
- it forwards only positions past the last one forwarded, so the client never sees a chunk twice;
  a delivery's end (``final`` or ``error``) is always forwarded, even at a position the client
  has: a redelivered stream that ends earlier still ends (its text at that position dropped);
- within a delivery chunks come in order (the broker keeps a reply stream's order and the worker
  numbers them): a jump in ``seq``, or a delivery first seen past its start, means chunks were
  lost on the way, and the request ends with an error rather than silently missing text
  (``ChunksLost``). A repeated ``seq`` (a send the worker retried) is dropped.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from uplion import broker, protocol

ChunkHandler = Callable[[protocol.Chunk], None]


@dataclass(slots=True)
class _Followed:
    on_chunk: ChunkHandler
    on_lost: Callable[[], None]
    generation: int | None = None  # the broker's at publication; None: not published yet


class ChunksLost(Exception):
    """Chunks of a reply never arrived: the text the client has would silently miss a part."""


class Relay:
    def __init__(self, source: broker.Broker, address: str | None = None) -> None:
        self.broker = source
        self.address = address or f"gw-{uuid.uuid4().hex[:12]}"
        self._followed: dict[str, _Followed] = {}
        self._probes: dict[str, asyncio.Event] = {}

    async def start(self) -> None:
        self.broker.on_data_lost(self._on_data_lost)
        await self.broker.subscribe_replies(self.address, self._on_chunk)

    @property
    def inflight(self) -> int:
        """Tasks whose replies this gateway follows."""
        return len(self._followed)

    def follow(self, task_id: str, on_chunk: ChunkHandler, on_lost: Callable[[], None]) -> None:
        """Hand every chunk of ``task_id`` to ``on_chunk`` until ``forget``, and call
        ``on_lost`` if the broker loses the task once ``published``; call it before the task
        is published, so that no chunk arrives unrouted."""
        self._followed[task_id] = _Followed(on_chunk, on_lost)

    def published(self, task_id: str) -> None:
        """The broker took the task (its ``publish`` returned)."""
        followed = self._followed.get(task_id)
        if followed is not None:
            followed.generation = self.broker.generation

    def forget(self, task_id: str) -> None:
        self._followed.pop(task_id, None)

    def _on_data_lost(self, generation: int) -> None:
        lost = [followed for followed in self._followed.values()
                if followed.generation is not None and followed.generation < generation]
        for followed in lost:
            followed.on_lost()

    async def probe(self, timeout_s: float) -> float | None:
        """Send a chunk of no task to this gateway's own reply address; the seconds it took to
        come back through the reader, or ``None`` when it did not within ``timeout_s`` (or the
        broker refused it): replies cannot reach this gateway."""
        probe_id = f"probe-{uuid.uuid4().hex}"
        arrived = self._probes[probe_id] = asyncio.Event()
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                await self.broker.send_reply(
                    self.address, protocol.Chunk(probe_id, "probe", 0, "final"))
                await arrived.wait()
        except Exception:
            return None
        finally:
            del self._probes[probe_id]
        return time.monotonic() - started

    def _on_chunk(self, chunk: protocol.Chunk) -> None:
        followed = self._followed.get(chunk.task_id)
        if followed is not None:
            followed.on_chunk(chunk)
        elif chunk.task_id in self._probes:
            self._probes[chunk.task_id].set()


class Reassembly:
    """One task's reply, put back in order by the rules of the module docstring."""

    def __init__(self) -> None:
        self._delivery: str | None = None
        self._attempt = -1
        self._next_seq = 0  # the next position expected of the current delivery
        self._left: set[str] = set()  # deliveries this reply followed and left
        self._forwarded = -1  # the last position forwarded to the client

    def accept(self, chunk: protocol.Chunk) -> protocol.Chunk | None:
        """The chunk to forward (maybe without its text), or ``None`` to drop it; raises
        ``ChunksLost``."""
        if chunk.delivery != self._delivery:
            if chunk.attempt < self._attempt or chunk.delivery in self._left:
                return None  # a delivery this reply has left behind
            if chunk.seq != 0:
                raise ChunksLost(
                    f"the answer's first {chunk.seq} chunks (delivery {chunk.delivery}) never "
                    "arrived"
                )
            if self._delivery is not None:
                self._left.add(self._delivery)
            self._delivery, self._attempt, self._next_seq = chunk.delivery, chunk.attempt, 0
        if chunk.seq < self._next_seq:
            return None  # a repeat of a chunk sent again
        if chunk.seq > self._next_seq:
            raise ChunksLost(
                f"{chunk.seq - self._next_seq} chunks of the answer (positions {self._next_seq} "
                f"to {chunk.seq - 1}) never arrived"
            )
        self._next_seq += 1
        if chunk.seq > self._forwarded:
            self._forwarded = chunk.seq
            return chunk
        if chunk.terminal:
            return _without_text(chunk)
        return None


def _without_text(chunk: protocol.Chunk) -> protocol.Chunk:
    """A stream's end at a position the client has seen: its finish reason and usage, without
    the text the other delivery said there (chat ``delta``, completion ``text``)."""
    if not chunk.data or "choices" not in chunk.data:
        return chunk
    choices: list[dict[str, Any]] = []
    for choice in chunk.data["choices"]:
        if "delta" in choice:
            choice = {**choice, "delta": {}}
        if "text" in choice:
            choice = {**choice, "text": ""}
        choices.append(choice)
    return msgspec.structs.replace(chunk, data={**chunk.data, "choices": choices})
