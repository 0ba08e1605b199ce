"""Fault: a gateway is SIGKILLed with requests in flight, beside another gateway under load.

The killed gateway holds four streams that have reserved their maximum against the token's quota
(in Redis). Nobody will settle those reservations: they are settled when they expire, so the
quota's counter comes back to exactly what was billed. The other gateway serves throughout, and
nothing is billed twice.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.faults import cluster
from tests.faults.conftest import Report
from tests.faults.load import Load, Stream, until
from tests.stores import PostgresServer

SLOW = "echo-brief"  # 50 ms a word, a 4 s deadline
STREAMS, WORDS = 4, 20
EXPIRY_WITHIN_S = 20.0  # the deadline, the grace for a worker's report, and some slack
BEFORE, AFTER = 20, 30  # answers of the other gateway before and after the kill


@pytest.mark.redis
def test_reservations_of_a_killed_gateway_expire(
    postgres_server: PostgresServer, tmp_path: Path, report: Report
) -> None:
    with cluster.running(tmp_path, postgres_server.create_database()) as running:
        running.start(gateways=2, workers={"worker-slow": SLOW, "worker-fast": "echo"})
        token_id, token = running.token(quota={"tokens": 10_000_000, "period": "day"})
        survivor = Load([running.gateways["gw2"]], token, lanes=2)
        streams, charged_at_kill, killed_at = asyncio.run(_kill_with_streams(
            running, token_id, token, survivor))
        served = [a for a in survivor.answers if a.status == 200]
        served_tokens = sum(a.tokens for a in served)
        expired_s = _until_quota_is(running, token_id, served_tokens, killed_at)
        quota_left = running.quota_used(token_id)
        exited = running.exited()
        running.bill()
        billed = running.billed(token_id)

    report(
        f"killed gw1 with {STREAMS} streams under way ({[len(s.deltas) for s in streams]} words "
        f"received, {[s.error for s in streams]}); gw2 answered {survivor.summary()}; quota "
        f"charged {charged_at_kill} tokens at the kill, {quota_left} "
        + (f"{expired_s:.1f} s later" if expired_s is not None else
           f"still after {EXPIRY_WITHIN_S:.0f} s")
        + f" (served: {served_tokens}); billed {billed.requests} requests / {billed.tokens} "
        f"tokens for gw2's {len(served)} x 200 / {served_tokens} tokens; exited: {exited}"
    )
    assert exited == {"gw1": -9}
    assert survivor.summary() == f"{len(survivor.answers)} x 200", "gw2 failed requests"
    assert all(stream.error is not None and not stream.done for stream in streams)
    assert (billed.requests, billed.errors, billed.prompt_tokens, billed.completion_tokens) == (
        len(served), 0, sum(a.prompt_tokens for a in served),
        sum(a.completion_tokens for a in served)), "billed once, what gw2 answered"
    assert charged_at_kill > served_tokens  # the reservations of the killed gateway's streams
    assert quota_left == served_tokens, "the reservations left behind never expired"


async def _kill_with_streams(
    running: cluster.Cluster, token_id: str, token: str, survivor: Load
) -> tuple[list[Stream], int, float]:
    streams = [Stream(running.gateways["gw1"]) for _ in range(STREAMS)]
    lanes = asyncio.create_task(survivor.run())
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                 timeout=30) as client:
        reading = [asyncio.create_task(stream.read(
            client, SLOW, " ".join(f"s{index}w{word}" for word in range(WORDS))))
            for index, stream in enumerate(streams)]
        try:
            await survivor.until(lambda a: a.status == 200, BEFORE, "answers of gw2")
            await until(lambda: all(len(s.deltas) >= 3 for s in streams),
                        "every stream of gw1 under way")
            running.kill("gw1")
            killed_at = time.monotonic()
            charged_at_kill = running.quota_used(token_id)
            await asyncio.gather(*reading)
            await survivor.until(lambda a: a.started > killed_at, AFTER,
                                 "answers of gw2 after the kill")
        finally:
            survivor.stop()
            await lanes
            for task in reading:
                task.cancel()
    return streams, charged_at_kill, killed_at


def _until_quota_is(
    running: cluster.Cluster, token_id: str, tokens: int, since: float
) -> float | None:
    """Seconds from ``since`` until the quota's counter is ``tokens`` (``None``: not within
    ``EXPIRY_WITHIN_S``)."""
    while running.quota_used(token_id) != tokens:
        if time.monotonic() > since + EXPIRY_WITHIN_S:
            return None
        time.sleep(0.1)
    return time.monotonic() - since
