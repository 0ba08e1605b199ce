"""The Apache Pulsar broker (``pulsar://`` URLs): the queue of a cluster that runs Pulsar.

Topics (named by ``uplion.broker.pulsar_names``), all persistent:

- A topic per model version. Its worker group is a durable ``Shared`` subscription. Each process
  creates it (at the earliest message) before its first publish to the topic, so no task goes to
  a topic nobody will read and KEDA's ``pulsar`` scaler finds the subscription before any worker
  runs (it refuses to scale on a subscription that does not exist, so a model at zero replicas
  would never wake up).
- ``uplion.reply.<address>`` per gateway, read by that gateway with a Reader (a non-durable
  cursor) from the end: a gateway that dies leaves no subscription behind, so Pulsar deletes its
  topic once idle (inactive-topic deletion, on by default).
- ``uplion.cancel``: cancellations (task id and deadline), read from the earliest message Pulsar
  still keeps by every process that takes tasks or subscribes to cancellations: a worker that
  starts after a cancellation still skips the task, until its deadline.
- ``uplion.status``: worker heartbeats, keyed by worker name. ``subscribe_status`` reads it from
  the earliest message kept (compacted, if compaction ran) for the last status of each worker,
  then follows it.

Choices:

- Pull only with free slots: a consumer has no receive queue (``receiver_queue_size=0``). Pulsar
  dispatches a task to a consumer only for a receive it asked for, so a busy worker hoards
  nothing, and the subscription's ``unackedMessages`` are exactly the tasks taken. ``take(n)``
  keeps at most ``n`` receives pending; once one is answered it waits ``_GATHER_S`` at most for
  the others (tasks waiting in the topic arrive together), and receives still pending when it
  returns stay pending for the next ``take``: a pending receive cannot be withdrawn without
  losing the task it may be receiving.
- Redelivery: a consumer that closes, or whose connection dies with its process, gives back at
  once every task it holds (Pulsar redelivers a consumer's unacknowledged messages when it goes).
  ``release`` is a negative ack, redelivered after 100 ms (the client's minimum). Every
  redelivery counts in ``Delivery.attempt`` (Pulsar's ``redelivery_count`` plus one). Tasks are
  never claimed away from a live consumer, so ``on_lost`` is never called. There is no ack
  timeout: the client applies one only to consumers with a receive queue, and a live worker's
  long task must stay with it; a worker that hangs while connected fails its liveness probe and
  is restarted, which closes its connection.
- Acks are grouped by the client and sent every 100 ms: a task's ack may reach the backlog that
  much later than ``ack`` returned. ``ack`` comes after the reply's last chunk was sent.
- Backlog: from the admin REST API (``uplion.broker.pulsar_admin``).
- Producers do not batch: a consumer without a receive queue cannot take batched messages, and a
  reply chunk should leave at once. Producers unused for ``_PRODUCER_IDLE_S`` are closed, so the
  reply topics of gateways that are gone become idle and get deleted.
- Retention: cancellations and statuses are read back only as far as Pulsar keeps them; without
  a retention policy that is the topic's current ledger (minutes to hours). Retention of an hour
  (``STATUS_MEMORY_S``) on the namespace keeps a failed model's status for the whole time.
- Outages: every call that fails on Pulsar (refused, timed out after ``operation_timeout_s``,
  disconnected) raises ``BrokerUnavailable``; the client reconnects by itself, and the readers
  of replies, cancellations and statuses retry with backoff (``uplion.backoff``, the one backoff
  policy of uplion's loops). ``close`` never raises because Pulsar is down.
- Event loop: ``start`` connects in the running loop, and the broker then lives in that loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pulsar
import pulsar.asyncio

from uplion import protocol
from uplion.backoff import Backoff
from uplion.broker import base, pulsar_admin, pulsar_names

logger = logging.getLogger(__name__)
_client_logger = logging.getLogger(f"{__name__}.client")

_GATHER_S = 0.03
_NACK_DELAY_MS = 100
_PRODUCER_IDLE_S = 60.0
_MAX_PENDING_SENDS = 10_000
_MAX_CANCEL_MARKS = 10_000


class _Cancellation(msgspec.Struct, frozen=True):
    """A message of ``uplion.cancel``: skip ``task`` until ``until`` (its deadline)."""

    task: str
    until: float


_decode_cancellation = msgspec.json.Decoder(_Cancellation).decode


@dataclass(slots=True)
class _Producer:
    producer: pulsar.asyncio.Producer
    last_used: float


async def _quietly(closing: Awaitable[Any], what: str) -> None:
    """Await a close whose failure changes nothing (the object is gone either way)."""
    try:
        await closing
    except pulsar.asyncio.PulsarException as error:
        logger.debug("%s failed: %s", what, error)


def _is_closed(error: pulsar.asyncio.PulsarException) -> bool:
    return bool(error.error() == pulsar.Result.AlreadyClosed)


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """Turn a Pulsar error inside the block into ``BrokerUnavailable`` saying ``what`` failed."""
    try:
        yield
    except pulsar.asyncio.PulsarException as error:
        raise base.BrokerUnavailable(f"Pulsar could not {what}: {error}") from error


async def _probe(hosts: tuple[tuple[str, int], ...], timeout_s: float) -> None:
    """Fail fast, saying where, when no broker of the URL accepts a connection."""
    failures: list[str] = []
    for host, port in hosts:
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_connection(host, port)
        except OSError as error:
            failures.append(f"{host}:{port} ({str(error) or 'no answer in time'})")
            continue
        writer.close()
        with contextlib.suppress(OSError):  # reset or not, the broker was there
            await writer.wait_closed()
        return
    raise ConnectionError(f"cannot connect to Pulsar: {', '.join(failures)}")


class PulsarBroker(base.Broker):
    """Topics, replies, cancellations and statuses on Apache Pulsar; see the module docstring."""

    def __init__(self, url: str) -> None:
        self.settings = pulsar_names.parse_url(url)
        self._admin = pulsar_admin.Admin(self.settings)
        self._client: pulsar.asyncio.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._producers: dict[str, _Producer] = {}
        self._creating = asyncio.Lock()
        self._grouped: set[str] = set()
        self._sweeping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._readers: list[pulsar.asyncio.Reader] = []
        self._consumers: set[_PulsarConsumer] = set()
        self._reply_handlers: dict[str, base.ChunkHandler] = {}
        self._cancel_handlers: list[base.CancelHandler] = []
        self._cancelled: dict[str, float] = {}
        self._cancel_lock = asyncio.Lock()
        self._following_cancellations = False
        self._status_handlers: list[base.StatusHandler] = []

    async def start(self) -> None:
        """Connect; fail with a ``ConnectionError`` that says why when Pulsar is not usable."""
        if self._closed:
            raise RuntimeError("the broker is closed")
        if self._client is not None:
            return
        settings = self.settings
        await _probe(settings.hosts, settings.operation_timeout_s)
        client = pulsar.asyncio.Client(
            settings.service_url,
            operation_timeout_seconds=max(1, math.ceil(settings.operation_timeout_s)),
            connection_timeout_ms=math.ceil(settings.operation_timeout_s * 1000),
            logger=_client_logger,
        )
        try:
            # A lookup: it needs the broker to speak Pulsar and the namespace to exist.
            await client.get_topic_partitions(settings.topic(pulsar_names.STATUS_TOPIC))
        except pulsar.asyncio.PulsarException as error:
            await _quietly(client.close(), "closing the Pulsar client")
            raise ConnectionError(
                f"Pulsar at {settings.service_url} did not serve a lookup in "
                f"{settings.tenant}/{settings.namespace} within {settings.operation_timeout_s:g} s "
                f"({error}): is it a Pulsar broker, and does the namespace exist?"
            ) from error
        self._client = client
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        if self._closed:
            return
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            raise RuntimeError("a PulsarBroker must be closed in the event loop that started it")
        self._closed = True
        self._reply_handlers.clear()
        self._cancel_handlers.clear()
        self._status_handlers.clear()
        for consumer in list(self._consumers):
            await consumer.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for reader in self._readers:
            await _quietly(reader.close(), f"closing the reader of {reader.topic()}")
        for name, entry in self._producers.items():
            await _quietly(entry.producer.close(), f"closing the producer of {name}")
        self._readers.clear()
        self._producers.clear()
        client, self._client = self._client, None
        if client is not None:
            await _quietly(client.close(), "closing the Pulsar client")
        await self._admin.close()

    def _live_client(self) -> pulsar.asyncio.Client:
        if self._closed:
            raise RuntimeError("the broker is closed")
        if self._client is None:
            raise RuntimeError("the Pulsar broker is not started: await start() first")
        if self._loop is not asyncio.get_running_loop():
            raise RuntimeError("a PulsarBroker is used from the event loop that started it only")
        return self._client

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _producer(self, topic: str, group: str | None = None) -> pulsar.asyncio.Producer:
        """The producer of uplion's ``topic``, made on first use (``group`` created first)."""
        client = self._live_client()
        name = self.settings.topic(topic)
        entry = self._producers.get(name)
        if entry is None:
            async with self._creating:
                entry = self._producers.get(name)
                if entry is None:
                    if group is not None and name not in self._grouped:
                        await self._create_group(client, name, group)
                        self._grouped.add(name)
                    producer = await client.create_producer(
                        name, batching_enabled=False, max_pending_messages=_MAX_PENDING_SENDS,
                    )
                    entry = self._producers[name] = _Producer(producer, time.monotonic())
                    if not self._sweeping:
                        self._sweeping = True
                        self._spawn(self._sweep_producers(), name="uplion-pulsar-producers")
        entry.last_used = time.monotonic()
        return entry.producer

    @staticmethod
    async def _create_group(client: pulsar.asyncio.Client, name: str, group: str) -> None:
        """Create the durable subscription ``group`` (from the earliest message) if missing."""
        consumer = await client.subscribe(
            name, group, consumer_type=pulsar.ConsumerType.Shared, receiver_queue_size=0,
            initial_position=pulsar.InitialPosition.Earliest,
        )
        await consumer.close()

    async def _sweep_producers(self) -> None:
        """Close the producers unused for ``_PRODUCER_IDLE_S``: their topics may go idle."""
        while True:
            await asyncio.sleep(_PRODUCER_IDLE_S / 2)
            idle_since = time.monotonic() - _PRODUCER_IDLE_S
            for name, entry in list(self._producers.items()):
                if entry.last_used < idle_since:
                    del self._producers[name]
                    await _quietly(entry.producer.close(), f"closing the producer of {name}")

    async def _follow(self, reader: pulsar.asyncio.Reader, dispatch: Callable[[bytes], None]
                      ) -> None:
        """Hand each message the reader reads to ``dispatch`` until the broker closes."""
        backoff = Backoff()
        while True:
            try:
                message = await reader.read_next()
            except pulsar.asyncio.PulsarException as error:
                if _is_closed(error):
                    return
                logger.warning("reading %s failed (%s); retrying in up to %.1f s",
                               reader.topic(), error, backoff.delay)
                await backoff.wait()
                continue
            backoff.reset()
            dispatch(message.data())

    async def publish(self, topic: str, task: protocol.Task) -> None:
        with _unavailable(f"publish task {task.id} to {topic}"):
            producer = await self._producer(topic, group=protocol.WORKER_GROUP)
            await producer.send(protocol.encode(task))

    def consumer(self, topic: str, group: str, name: str) -> base.Consumer:
        return _PulsarConsumer(self, self.settings.topic(topic), group, name)

    async def send_reply(self, address: str, chunk: protocol.Chunk) -> None:
        with _unavailable(f"send a reply of task {chunk.task_id} to {address}"):
            producer = await self._producer(pulsar_names.REPLY_PREFIX + address)
            await producer.send(protocol.encode(chunk))

    async def subscribe_replies(self, address: str, handler: base.ChunkHandler) -> None:
        """Deliver the chunks sent to ``address`` from now on (a second call replaces handler)."""
        client = self._live_client()
        if address in self._reply_handlers:
            self._reply_handlers[address] = handler
            return
        with _unavailable(f"read the replies to {address}"):
            reader = await client.create_reader(
                self.settings.topic(pulsar_names.REPLY_PREFIX + address), pulsar.MessageId.latest
            )
        self._readers.append(reader)
        self._reply_handlers[address] = handler
        self._spawn(self._follow(reader, functools.partial(self._on_reply, address)),
                    name=f"uplion-replies-{address}")

    def _on_reply(self, address: str, data: bytes) -> None:
        handler = self._reply_handlers.get(address)
        if handler is None:
            return
        try:
            chunk = protocol.decode_chunk(data)
        except msgspec.DecodeError as error:
            logger.warning("a message to %s is not a chunk (%s): skipped", address, error)
            return
        try:
            handler(chunk)
        except Exception:
            logger.exception("the reply handler of %s failed on a chunk of task %s",
                             address, chunk.task_id)

    async def cancel(self, task: protocol.Task) -> None:
        self._mark_cancelled(task.id, task.deadline)
        mark = msgspec.json.encode(_Cancellation(task=task.id, until=task.deadline))
        with _unavailable(f"cancel task {task.id}"):
            producer = await self._producer(pulsar_names.CANCEL_TOPIC)
            await producer.send(mark)

    async def subscribe_cancellations(self, handler: base.CancelHandler) -> None:
        self._cancel_handlers.append(handler)
        try:
            with _unavailable("follow cancellations"):
                await self._follow_cancellations()
        except BaseException:
            self._cancel_handlers.remove(handler)
            raise

    async def _follow_cancellations(self) -> None:
        """Read back the cancellations Pulsar keeps, then follow new ones (once per broker)."""
        async with self._cancel_lock:
            if self._following_cancellations:
                return
            client = self._live_client()
            reader = await client.create_reader(
                self.settings.topic(pulsar_names.CANCEL_TOPIC), pulsar.MessageId.earliest
            )
            try:
                while await reader.has_message_available():
                    self._on_cancellation((await reader.read_next()).data(), announce=False)
            except BaseException:
                await _quietly(reader.close(), "closing the cancellations reader")
                raise
            self._readers.append(reader)
            self._following_cancellations = True
            self._spawn(self._follow(reader, self._on_cancellation), name="uplion-cancellations")

    def _on_cancellation(self, data: bytes, announce: bool = True) -> None:
        try:
            mark = _decode_cancellation(data)
        except msgspec.DecodeError as error:
            logger.warning("a message on %s is not a cancellation (%s): skipped",
                           pulsar_names.CANCEL_TOPIC, error)
            return
        self._mark_cancelled(mark.task, mark.until)
        if not announce:
            return
        for handler in list(self._cancel_handlers):
            try:
                handler(mark.task)
            except Exception:
                logger.exception("a cancellation handler failed on task %s", mark.task)

    def _mark_cancelled(self, task_id: str, until: float) -> None:
        now = time.time()
        if until <= now:
            return  # an expired task is skipped anyway
        self._cancelled[task_id] = until
        if len(self._cancelled) > _MAX_CANCEL_MARKS:
            self._cancelled = {k: v for k, v in self._cancelled.items() if v > now}

    def is_cancelled(self, task_id: str) -> bool:
        return task_id in self._cancelled

    async def backlog(self, topic: str, group: str) -> base.Backlog:
        if self._closed:
            raise RuntimeError("the broker is closed")
        return await self._admin.backlog(topic, group)

    async def publish_status(self, status: protocol.WorkerStatus) -> None:
        with _unavailable(f"publish the status of worker {status.worker}"):
            producer = await self._producer(pulsar_names.STATUS_TOPIC)
            await producer.send(protocol.encode(status), partition_key=status.worker)

    async def subscribe_status(self, handler: base.StatusHandler) -> None:
        with _unavailable("read the workers' statuses"):
            await self._subscribe_status(handler)

    async def _subscribe_status(self, handler: base.StatusHandler) -> None:
        client = self._live_client()
        reader = await client.create_reader(
            self.settings.topic(pulsar_names.STATUS_TOPIC), pulsar.MessageId.earliest,
            is_read_compacted=True,
        )
        last: dict[str, protocol.WorkerStatus] = {}
        try:
            while await reader.has_message_available():
                status = _decode_status((await reader.read_next()).data())
                if status is not None:
                    last[status.worker] = status
        except BaseException:
            await _quietly(reader.close(), "closing a status reader")
            raise
        self._readers.append(reader)
        self._status_handlers.append(handler)
        horizon = time.time() - base.STATUS_MEMORY_S
        for status in last.values():
            if status.at >= horizon:
                handler(status)
        self._spawn(self._follow(reader, functools.partial(self._on_status, handler)),
                    name="uplion-status")

    def _on_status(self, handler: base.StatusHandler, data: bytes) -> None:
        if handler not in self._status_handlers:
            return
        status = _decode_status(data)
        if status is None:
            return
        try:
            handler(status)
        except Exception:
            logger.exception("a status handler failed on worker %s", status.worker)


def _decode_status(data: bytes) -> protocol.WorkerStatus | None:
    try:
        return protocol.decode_status(data)
    except msgspec.DecodeError:
        logger.warning("ignored a malformed worker status on %s", pulsar_names.STATUS_TOPIC)
        return None


class _PulsarConsumer(base.Consumer):
    """A worker's consumer on its group's Shared subscription; a receipt is a message id."""

    def __init__(self, broker: PulsarBroker, topic: str, group: str, name: str) -> None:
        self._broker = broker
        self._topic = topic
        self._group = group
        self._name = name
        self._consumer: pulsar.asyncio.Consumer | None = None
        self._receiving: collections.deque[asyncio.Task[pulsar.Message]] = collections.deque()
        self._held: dict[str, pulsar.Message] = {}
        self._taking = asyncio.Lock()
        self._closed = False

    async def take(self, max_count: int, timeout: float) -> list[base.Delivery]:
        if self._closed:
            raise RuntimeError("the consumer is closed")
        if max_count <= 0:
            return []
        async with self._taking:
            with _unavailable(f"deliver tasks of {self._topic}"):
                return await self._take(max_count, timeout)

    async def _take(self, max_count: int, timeout: float) -> list[base.Delivery]:
        consumer = await self._open()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        deliveries: list[base.Delivery] = []
        while len(deliveries) < max_count:
            while len(self._receiving) < max_count - len(deliveries):
                self._receiving.append(loop.create_task(consumer.receive()))
            head = self._receiving[0]
            if not head.done():
                remaining = give_up - loop.time()
                if remaining > 0:
                    await asyncio.wait([head], timeout=remaining)
                if not head.done():
                    break
            if self._closed:
                raise RuntimeError("the consumer was closed while taking")
            self._receiving.popleft()
            if head.exception() is not None and deliveries:
                return deliveries  # the tasks in hand go to the worker; the failure comes again
            delivery = await self._accept(consumer, head.result())
            if delivery is not None:
                deliveries.append(delivery)
                give_up = min(give_up, loop.time() + _GATHER_S)
        return deliveries

    async def ack(self, delivery: base.Delivery) -> bool:
        message = self._held.pop(delivery.receipt, None)
        if message is None or self._consumer is None:
            return False
        with _unavailable(f"ack task {delivery.task.id} of {self._topic}"):
            await self._consumer.acknowledge(message)
        return True

    async def release(self, delivery: base.Delivery) -> None:
        message = self._held.pop(delivery.receipt, None)
        if message is not None and self._consumer is not None:
            with _unavailable(f"give back task {delivery.task.id} of {self._topic}"):
                await self._consumer.negative_acknowledge(message)

    async def close(self) -> None:
        """Give back what this consumer holds: Pulsar redelivers it when the consumer closes."""
        if self._closed:
            return
        self._closed = True
        self._broker._consumers.discard(self)
        receiving = list(self._receiving)
        self._receiving.clear()
        for task in receiving:
            task.cancel()
        await asyncio.gather(*receiving, return_exceptions=True)
        self._held.clear()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await _quietly(consumer.close(), f"closing consumer {self._name} of {self._topic}")

    async def _open(self) -> pulsar.asyncio.Consumer:
        """On first take: follow cancellations (to skip cancelled tasks), then subscribe."""
        if self._consumer is None:
            client = self._broker._live_client()
            await self._broker._follow_cancellations()
            self._consumer = await client.subscribe(
                self._topic, self._group, consumer_type=pulsar.ConsumerType.Shared,
                receiver_queue_size=0, consumer_name=self._name,
                negative_ack_redelivery_delay_ms=_NACK_DELAY_MS,
                initial_position=pulsar.InitialPosition.Earliest,
            )
            self._broker._consumers.add(self)
        return self._consumer

    async def _accept(self, consumer: pulsar.asyncio.Consumer, message: pulsar.Message
                      ) -> base.Delivery | None:
        """Hold a live task and return it; ack garbage, expired and cancelled ones at once."""
        receipt = str(message.message_id())
        if receipt in self._held:
            return None  # redelivered while this consumer works on it (after a reconnection)
        try:
            task = protocol.decode_task(message.data())
        except msgspec.DecodeError as error:
            logger.warning("message %s of %s is not a task (%s): acked", receipt, self._topic,
                           error)
            await consumer.acknowledge(message)
            return None
        if self._broker.is_cancelled(task.id) or task.expired():
            logger.debug("task %s is %s: skipped", task.id,
                         "expired" if task.expired() else "cancelled")
            await consumer.acknowledge(message)
            return None
        self._held[receipt] = message
        return base.Delivery(task=task, receipt=receipt, attempt=message.redelivery_count() + 1)
