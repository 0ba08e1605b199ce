"""The one interface every broker implements: topics of tasks, reply channels, cancellations.

Semantics every implementation keeps (the contract tests in ``tests/broker`` hold them to it):

- ``publish`` appends a task to a topic; any number of consumers of the topic's worker group
  share it, each task going to one consumer at a time.
- ``Consumer.take(n)`` returns at most ``n`` tasks: a worker asks only for as many as it has free
  slots (pull, no dispatcher). A taken task stays owned by that consumer until ``ack``; if the
  consumer dies, the task is delivered again to another consumer after the visibility timeout.
- Replies go to a gateway's own address; the gateway holds the client connection.
- ``cancel`` marks a task as abandoned by its client: consumers skip it if not yet started, and
  workers that hold it are told through ``subscribe_cancellations``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from uplion import protocol

ChunkHandler = Callable[[protocol.Chunk], None]
CancelHandler = Callable[[str], None]
StatusHandler = Callable[[protocol.WorkerStatus], None]


class BrokerUnavailable(Exception):
    """The broker cannot be reached now (refused, reset, timed out). Callers wait it out with
    backoff and try again: workers keep their loaded model, gateways answer 503 meanwhile."""


MAX_DELIVERIES = 3
"""A task delivered this many times without an answer (its workers died holding it) is not
run again: the worker that takes it next fails the request with a clear error and acks it."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A task handed to one consumer; ``receipt`` is what the broker needs to ack it;
    ``attempt`` counts its deliveries (1 the first time, 2 after one redelivery, ...)."""

    task: protocol.Task
    receipt: str
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class Backlog:
    """Tasks of a topic not yet taken (``waiting``) and taken but not acked (``in_flight``)."""

    waiting: int
    in_flight: int

    @property
    def total(self) -> int:
        return self.waiting + self.in_flight


class Consumer(abc.ABC):
    """One worker's handle on a topic."""

    @abc.abstractmethod
    async def take(self, max_count: int, timeout: float) -> list[Delivery]:
        """Wait up to ``timeout`` seconds for tasks; return at most ``max_count`` (maybe none)."""

    @abc.abstractmethod
    async def ack(self, delivery: Delivery) -> bool:
        """The task is answered: it is never delivered again. ``False`` (and nothing removed)
        when this consumer no longer owns it: another consumer claimed it since."""

    @abc.abstractmethod
    async def release(self, delivery: Delivery) -> None:
        """Give a task back unanswered so another consumer takes it at once."""

    lost_handler: Callable[[str], None] | None = None

    def on_lost(self, handler: Callable[[str], None]) -> None:
        """Call ``handler(task_id)`` when a task this consumer holds was claimed by another
        (this worker stalled past the visibility timeout): the worker stops working on it.
        Brokers whose tasks are never claimed away from a live consumer never call it."""
        self.lost_handler = handler

    @abc.abstractmethod
    async def close(self) -> None:
        """Give back what is held and stop; never raises because the broker is down."""


class Broker(abc.ABC):
    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, topic: str, task: protocol.Task) -> None: ...

    @abc.abstractmethod
    def consumer(self, topic: str, group: str, name: str) -> Consumer: ...

    @property
    def generation(self) -> int:
        """How many times the broker found it had lost what it held (tasks published and
        replies sent before: a Redis restarted without its data); read it after ``publish``
        returns to know which loss a task would be part of."""
        return 0

    def on_data_lost(self, handler: Callable[[int], None]) -> None:
        """Call ``handler(generation)`` when the broker finds such a loss: the tasks published
        with a lower ``generation`` will never be answered. Brokers that cannot lose what they
        took (the embedded one dies with its process; Pulsar persists) never call it."""
        del handler

    @abc.abstractmethod
    async def send_reply(self, address: str, chunk: protocol.Chunk) -> None: ...

    @abc.abstractmethod
    async def subscribe_replies(self, address: str, handler: ChunkHandler) -> None:
        """Deliver every chunk sent to ``address`` to ``handler`` until the broker closes."""

    @abc.abstractmethod
    async def cancel(self, task: protocol.Task) -> None: ...

    @abc.abstractmethod
    async def subscribe_cancellations(self, handler: CancelHandler) -> None:
        """Call ``handler(task_id)`` for every cancellation from now until the broker closes."""

    @abc.abstractmethod
    async def backlog(self, topic: str, group: str) -> Backlog: ...

    @abc.abstractmethod
    async def publish_status(self, status: protocol.WorkerStatus) -> None:
        """Announce a worker's heartbeat to every gateway (and keep it for late subscribers)."""

    @abc.abstractmethod
    async def subscribe_status(self, handler: StatusHandler) -> None:
        """Call ``handler`` with the last known status of every worker seen within the last
        ``STATUS_MEMORY_S``, then with each new one until the broker closes."""


STATUS_MEMORY_S = 3600.0
"""How long a worker's last status is kept: a Failed model stays Failed this long without news."""
