"""``uplion_gateway_reply_reader_up``: a probe through the gateway's own reply address comes back
while its reader reads, and not when nothing reads it (the alert UplionGatewayNoReplyReader)."""

from __future__ import annotations

import asyncio

from uplion.broker.memory import MemoryBroker
from uplion.gateway import metrics as metrics_
from uplion.gateway.relay import Relay


async def test_the_probe_comes_back_only_through_a_reader() -> None:
    source = MemoryBroker()
    await source.start()
    reading, deaf = Relay(source), Relay(source)
    await reading.start()  # ``deaf`` never subscribes to its address
    took = await reading.probe(timeout_s=2)
    assert took is not None
    assert took >= 0
    assert await deaf.probe(timeout_s=0.2) is None
    assert reading.inflight == 0  # a probe is no request

    metrics = metrics_.GatewayMetrics()
    metrics.reply_reader_up.set(1)  # as it was while the reader read
    following = asyncio.create_task(metrics_.follow_replies(metrics, deaf, interval_s=0.1))
    down = b"uplion_gateway_reply_reader_up 0.0"
    try:
        for _ in range(200):  # the probe gives up after READ_TIMEOUT_S (5 s)
            if down in metrics.exposition():
                break
            await asyncio.sleep(0.05)
    finally:
        following.cancel()
    assert down in metrics.exposition()
    await source.close()
