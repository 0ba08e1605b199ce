"""One request's life at the gateway: every end (answered, failed, timed out, abandoned, broker
error) settles the reservation and emits one usage event, first; broker clean-up comes after and
may fail without leaking anything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.worker.counting import CountingEcho
from tests.worker.flaky import FlakyBroker
from uplion import protocol
from uplion.accounts.principal import Principal, Quota
from uplion.billing import MemoryUsageStream, UsageEvent
from uplion.gateway import call as calls
from uplion.gateway import errors, ledger
from uplion.gateway.admission import Decision, MemoryAdmission, Reservation
from uplion.gateway.catalog import Catalog, Route
from uplion.gateway.estimate import Estimate
from uplion.gateway.exchange import Exchange
from uplion.gateway.health import HealthBoard
from uplion.gateway.metrics import GatewayMetrics
from uplion.gateway.relay import Relay
from uplion.models import EngineSpec, ModelSpec
from uplion.worker import Worker

CALLER = Principal(token_id="tok", token_hash="h", user_id="usr", user_name="ann", role="member",
                   token_quota=Quota(tokens=100_000, period="day"))
WORDS = " ".join(f"w{i}" for i in range(40))
GRACE_S = 0.5


class Settlements(MemoryAdmission):
    """The embedded admission, remembering each settlement it made."""

    def __init__(self) -> None:
        super().__init__()
        self.settled: list[tuple[str, int, int]] = []
        self.holds: list[float | None] = []
        self.deciding = asyncio.Event()
        self.decide = asyncio.Event()
        self.decide.set()

    async def admit(self, principal: Principal, request_id: str, estimated_tokens: int,
                    hold_s: float | None = None) -> Decision:
        self.holds.append(hold_s)
        self.deciding.set()
        await self.decide.wait()
        return await super().admit(principal, request_id, estimated_tokens, hold_s)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        self.settled.append((reservation.request_id, reservation.tokens, used_tokens))
        await super().settle(reservation, used_tokens)


@dataclass
class Gateway:
    broker: FlakyBroker
    relay: Relay
    admission: Settlements
    usage: MemoryUsageStream
    exchange: Exchange
    route: Route

    async def open(self, stream: bool = False, estimate: Estimate | None = None) -> calls.Call:
        payload = {"model": "m", "stream": stream,
                   "messages": [{"role": "user", "content": WORDS}]}
        return await self.exchange.call(
            self.route, protocol.Protocol.OPENAI_CHAT, payload, stream, CALLER,
            estimate or Estimate(50, 40, 40),
        )

    async def events(self, count: int = 1) -> list[UsageEvent]:
        """The next ``count`` usage events, then proof that no other follows at once."""
        found: list[UsageEvent] = []
        async with asyncio.timeout(10):
            while len(found) < count:
                found += [event for _, event in await self.usage.read(10, 1000)]
        assert await self.usage.read(10, 0) == []
        return found


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    broker = FlakyBroker()
    await broker.start()
    relay = Relay(broker)
    await relay.start()
    admission = Settlements()
    usage = MemoryUsageStream()
    exchange = Exchange(relay, GatewayMetrics(), admission, usage, HealthBoard(),
                        cancel_grace_s=GRACE_S)
    spec = ModelSpec(name="m", engine=EngineSpec(kind="test-echo"), request_timeout_s=5)
    route = Catalog([spec]).resolve("m")
    assert route is not None
    yield Gateway(broker, relay, admission, usage, exchange, route)
    await exchange.drain()
    await broker.close()


@pytest.fixture
async def engine(gateway: Gateway) -> AsyncIterator[CountingEcho]:
    counting = CountingEcho(token_delay_s=0.02, after=3)
    worker = Worker(gateway.broker, gateway.route.spec, counting)
    run = asyncio.create_task(worker.run())
    yield counting
    worker.stop()
    await run


async def finished(call: calls.Call) -> protocol.Chunk:
    while True:
        chunk = await call.next_chunk()
        if chunk.terminal:
            return chunk


async def test_an_answer_is_billed_once_with_the_workers_usage(
    gateway: Gateway, engine: CountingEcho
) -> None:
    call = await gateway.open()
    final = await finished(call)
    assert final.usage == protocol.Usage(40, 40)
    call.finish(calls.CLIENT_GONE)  # a second end changes nothing
    [event] = await gateway.events()
    assert (event.status, event.prompt_tokens, event.completion_tokens) == (200, 40, 40)
    await gateway.exchange.drain()
    assert gateway.admission.settled == [(call.task.id, 90, 80)]
    assert gateway.relay.inflight == 0


async def test_a_reservation_is_held_for_the_deadline_the_report_and_a_margin(
    gateway: Gateway, engine: CountingEcho
) -> None:
    """A gateway that dies leaves its reservations to expire once nothing can settle them."""
    call = await gateway.open()
    await finished(call)
    assert gateway.admission.holds == [5 + GRACE_S + ledger.SETTLE_MARGIN_S]
    assert call.entry.decision.reservation is not None
    assert call.entry.decision.reservation.held


async def test_an_answer_that_used_its_whole_reservation_is_settled_too(
    gateway: Gateway, engine: CountingEcho
) -> None:
    """Settling marks the reservation settled: else its hold would end and return it."""
    call = await gateway.open(estimate=Estimate(40, 40, 40))
    assert (await finished(call)).usage == protocol.Usage(40, 40)
    await gateway.exchange.drain()
    assert gateway.admission.settled == [(call.task.id, 80, 80)]


async def test_the_task_carries_the_reserved_maximum(
    gateway: Gateway, engine: CountingEcho
) -> None:
    call = await gateway.open(estimate=Estimate(50, 7, 7))
    assert call.task.max_tokens == 7
    final = await finished(call)
    assert final.usage == protocol.Usage(40, 7)


async def test_the_deadline_ends_a_call_nobody_reads(gateway: Gateway) -> None:
    gateway.route = Route(gateway.route.spec.model_copy(update={"request_timeout_s": 0.2}),
                          gateway.route.topic)
    call = await gateway.open()  # no worker: no answer comes
    [event] = await gateway.events()
    assert (event.status, event.prompt_tokens, event.completion_tokens) == (504, 0, 0)
    assert call.outcome is calls.TIMED_OUT
    assert gateway.relay.inflight == 0
    with pytest.raises(errors.ApiError) as caught:
        await call.next_chunk()
    assert caught.value.error.status == 504
    await gateway.exchange.drain()  # the clean-up after the end: the task is cancelled
    assert gateway.broker.is_cancelled(call.task.id)
    assert gateway.admission.settled == [(call.task.id, 90, 0)]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_gone_is_billed_the_prompt_and_what_was_produced(
    gateway: Gateway, engine: CountingEcho, stream: bool
) -> None:
    call = await gateway.open(stream=stream)
    await engine.reached.wait()
    call.finish(calls.CLIENT_GONE)
    [event] = await gateway.events()
    assert event.status == 499
    assert event.prompt_tokens == 50  # the gateway's estimate: the worker stopped before counting
    assert event.completion_tokens == engine.produced
    assert 3 <= engine.produced < 40
    await gateway.exchange.drain()
    assert gateway.admission.settled == [(call.task.id, 90, 50 + engine.produced)]
    assert gateway.relay.inflight == 0


async def test_a_client_gone_before_any_worker_took_it_costs_nothing(gateway: Gateway) -> None:
    call = await gateway.open()  # no worker
    call.finish(calls.CLIENT_GONE)
    [event] = await gateway.events()  # after the grace period, with what the gateway knows
    assert (event.status, event.prompt_tokens, event.completion_tokens) == (499, 0, 0)
    assert gateway.relay.inflight == 0
    assert gateway.broker.is_cancelled(call.task.id)


async def test_a_failed_publish_is_a_503_that_reserves_nothing(gateway: Gateway) -> None:
    gateway.broker.failing = {"publish", "cancel"}
    with pytest.raises(errors.ApiError) as caught:
        await gateway.open()
    assert caught.value.error.status == 503
    assert caught.value.error.code == "broker_unavailable"
    assert caught.value.headers["Retry-After"] == "1"
    [event] = await gateway.events()
    assert (event.status, event.prompt_tokens, event.completion_tokens) == (503, 0, 0)
    await gateway.exchange.drain()  # the failed cancel is logged, nothing more
    [(_, reserved, used)] = gateway.admission.settled
    assert (reserved, used) == (90, 0)
    assert gateway.relay.inflight == 0


async def test_a_backlog_that_cannot_be_read_after_publishing_orphans_nothing(
    gateway: Gateway, engine: CountingEcho
) -> None:
    gateway.broker.failing = {"backlog"}  # a cold model's queue position is read after publish
    call = await gateway.open()
    assert "x-uplion-queue-position" not in call.headers
    final = await finished(call)
    assert final.kind == "final"
    [event] = await gateway.events()
    assert event.status == 200
    assert gateway.relay.inflight == 0


async def test_a_cancel_that_fails_leaks_nothing(gateway: Gateway, engine: CountingEcho) -> None:
    call = await gateway.open()
    await engine.reached.wait()
    gateway.broker.failing = {"cancel"}
    call.finish(calls.CLIENT_GONE)
    [event] = await gateway.events()  # the worker never heard: settled after the grace period
    assert (event.status, event.prompt_tokens, event.completion_tokens) == (499, 0, 0)
    await gateway.exchange.drain()
    assert gateway.relay.inflight == 0


async def test_chunks_lost_on_the_way_end_the_call_with_an_error(gateway: Gateway) -> None:
    call = await gateway.open(stream=True)
    address = gateway.relay.address
    for seq in (0, 1, 3):
        await gateway.broker.send_reply(address, protocol.Chunk(
            call.task.id, "w/1", seq, "data", data={"choices": []}, attempt=1))
    assert (await call.next_chunk()).seq == 0
    assert (await call.next_chunk()).seq == 1
    with pytest.raises(errors.ApiError) as caught:
        await call.next_chunk()
    assert caught.value.error.status == 502
    assert caught.value.error.code == "reply_chunks_lost"
    [event] = await gateway.events()
    assert (event.status, event.prompt_tokens, event.completion_tokens) == (502, 50, 2)
    await gateway.exchange.drain()
    assert gateway.broker.is_cancelled(call.task.id)


async def test_a_redelivered_stream_ending_earlier_ends_the_call(gateway: Gateway) -> None:
    call = await gateway.open(stream=True)
    address = gateway.relay.address
    for seq in range(4):
        await gateway.broker.send_reply(address, protocol.Chunk(
            call.task.id, "w/1", seq, "data", data={"choices": []}, attempt=1))
    for seq in range(4):
        assert (await call.next_chunk()).seq == seq
    await gateway.broker.send_reply(address, protocol.Chunk(
        call.task.id, "v/1", 0, "data", data={"choices": []}, attempt=2))
    await gateway.broker.send_reply(address, protocol.Chunk(
        call.task.id, "v/1", 1, "final", data={"choices": []}, attempt=2,
        usage=protocol.Usage(40, 2)))
    async with asyncio.timeout(2):
        final = await call.next_chunk()
    assert final.kind == "final"
    [event] = await gateway.events()
    assert (event.status, event.completion_tokens) == (200, 2)



async def test_a_request_cancelled_while_admission_decides_gets_its_reservation_back(
    gateway: Gateway,
) -> None:
    gateway.admission.decide.clear()
    opening = asyncio.create_task(gateway.open())
    await gateway.admission.deciding.wait()
    opening.cancel()  # the handler stops while the store decides (a slow Redis, a shutdown)
    gateway.admission.decide.set()
    with pytest.raises(asyncio.CancelledError):
        await opening
    await gateway.exchange.drain()
    [(_, reserved, used)] = gateway.admission.settled
    assert (reserved, used) == (90, 0)
    assert gateway.relay.inflight == 0
