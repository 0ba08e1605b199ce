"""The local runtime scales a model by its backlog: from zero to max and back, losing nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import helpers

WORDS = " ".join(f"w{i}" for i in range(20))  # 20 x 20 ms per request


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helpers.Served]:
    with helpers.platform(tmp_path_factory.mktemp("scaling")) as running:
        yield running


def cold_model(served: helpers.Served) -> dict[str, Any]:
    models = httpx.get(f"{served.url}/admin/models", headers=served.headers).json()["data"]
    return next(m for m in models if m["name"] == "cold")


async def _burst(served: helpers.Served, count: int) -> list[tuple[float, httpx.Response]]:
    body = {"model": "cold", "messages": [{"role": "user", "content": WORDS}]}
    async with httpx.AsyncClient(timeout=30, headers=served.headers) as client:
        async def one() -> tuple[float, httpx.Response]:
            started = time.monotonic()
            response = await client.post(f"{served.url}/v1/chat/completions", json=body)
            return time.monotonic() - started, response
        return await asyncio.gather(*(one() for _ in range(count)))


def test_burst_scales_from_zero_to_max_and_back(served: helpers.Served) -> None:
    before = cold_model(served)
    assert before["status"]["replicas"] == 0
    assert before["status"]["phase"] == "Pending"

    peak = 0

    async def watch(done: asyncio.Event) -> None:
        nonlocal peak
        async with httpx.AsyncClient(headers=served.headers) as client:
            while not done.is_set():
                models = (await client.get(f"{served.url}/admin/models")).json()["data"]
                cold = next(m for m in models if m["name"] == "cold")
                peak = max(peak, cold["status"]["replicas"])
                await asyncio.sleep(0.1)

    async def run() -> list[tuple[float, httpx.Response]]:
        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        results = await _burst(served, 16)
        done.set()
        await watcher
        return results

    results = asyncio.run(run())
    assert [r.status_code for _, r in results] == [200] * 16
    assert all(r.json()["choices"][0]["message"]["content"] == WORDS for _, r in results)
    assert peak == 3
    first = min(latency for latency, _ in results)
    print(f"\ncold start: first answer {first * 1000:.0f} ms after the burst was queued")
    assert any("x-uplion-queue-position" in r.headers for _, r in results)

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and cold_model(served)["status"]["replicas"] > 0:
        time.sleep(0.2)
    after = cold_model(served)
    assert after["status"]["replicas"] == 0
    assert after["backlog"] == {"waiting": 0, "in_flight": 0}


def test_requests_during_scale_down_are_answered(served: helpers.Served) -> None:
    results = asyncio.run(_burst(served, 6))
    assert [r.status_code for _, r in results] == [200] * 6
    time.sleep(2.2)  # the cooldown ends while the next burst arrives
    results = asyncio.run(_burst(served, 6))
    assert [r.status_code for _, r in results] == [200] * 6
