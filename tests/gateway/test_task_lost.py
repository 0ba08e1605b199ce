"""A Redis that restarts without its data loses the tasks waiting in it: their requests end at
once with 503 ``task_lost`` (not a wait to their deadline), and a request published after the
restart is not mistaken for one of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.redisio.server import RedisProcess
from uplion import protocol
from uplion.accounts.principal import Principal, Quota
from uplion.billing import MemoryUsageStream
from uplion.broker.redis_streams import RedisStreamsBroker
from uplion.gateway import call as calls
from uplion.gateway import errors
from uplion.gateway.admission import MemoryAdmission
from uplion.gateway.catalog import Catalog, Route
from uplion.gateway.estimate import Estimate
from uplion.gateway.exchange import Exchange
from uplion.gateway.health import HealthBoard
from uplion.gateway.metrics import GatewayMetrics
from uplion.gateway.relay import Relay
from uplion.models import EngineSpec, ModelSpec

CALLER = Principal(token_id="tok", token_hash="h", user_id="usr", user_name="ann", role="member",
                   token_quota=Quota(tokens=100_000, period="day"))


@dataclass
class Gateway:
    server: RedisProcess
    exchange: Exchange
    route: Route
    usage: MemoryUsageStream

    async def open(self) -> calls.Call:
        payload = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
        return await self.exchange.call(self.route, protocol.Protocol.OPENAI_CHAT, payload,
                                        False, CALLER, Estimate(5, 10, 10))


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    server = RedisProcess(tmp_path)
    broker = RedisStreamsBroker(f"{server.url}?socket_timeout=1")
    relay = Relay(broker)
    await relay.start()
    usage = MemoryUsageStream()
    exchange = Exchange(relay, GatewayMetrics(), MemoryAdmission(), usage, HealthBoard())
    spec = ModelSpec(name="m", engine=EngineSpec(kind="test-echo"), request_timeout_s=300)
    route = Catalog([spec]).resolve("m")
    assert route is not None
    try:
        yield Gateway(server, exchange, route, usage)
    finally:
        await exchange.drain()
        await broker.close()
        server.stop()


@pytest.mark.redis
async def test_tasks_redis_lost_end_at_once_with_503(gateway: Gateway) -> None:
    waiting = await gateway.open()  # no worker: the task waits in its topic
    gateway.server.restart(keep_data=False)
    async with asyncio.timeout(30):  # the reply reader notices the restart; far below 300 s
        with pytest.raises(errors.ApiError) as ended:
            await waiting.next_chunk()
    assert ended.value.error.status == 503
    assert ended.value.error.code == "task_lost"
    assert ended.value.headers["Retry-After"] == "1"
    assert waiting.outcome == calls.TASK_LOST
    [(_, event)] = await gateway.usage.read(10, 1000)
    assert (event.status, event.prompt_tokens, event.completion_tokens) == (503, 0, 0)


@pytest.mark.redis
async def test_a_task_published_after_the_loss_is_not_lost(gateway: Gateway) -> None:
    before = await gateway.open()
    gateway.server.restart(keep_data=False)
    after = await gateway.open()  # its publish meets the new epoch first, or the reader does
    async with asyncio.timeout(30):
        with pytest.raises(errors.ApiError, match="lost this request"):
            await before.next_chunk()
    assert after.outcome is None
    after.finish(calls.CLIENT_GONE)


@pytest.mark.redis
async def test_a_restart_that_keeps_the_data_loses_nothing(gateway: Gateway) -> None:
    waiting = await gateway.open()
    gateway.server.restart(keep_data=True)
    after = await gateway.open()  # the same epoch: nothing was lost
    assert waiting.outcome is None
    assert after.outcome is None
    for call in (waiting, after):
        call.finish(calls.CLIENT_GONE)
