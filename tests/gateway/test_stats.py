"""The gateway's live stats per model version: exact counts over a sliding window, percentiles
within a bin of the truth, and the figures of a running platform matching what it was sent."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import httpx
import pytest

from tests import helpers
from uplion.gateway import stats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_counts_slide_out_of_the_window() -> None:
    clock = Clock()
    live = stats.LiveStats(clock)
    series = live.series("echo", "2")
    for second in range(10):
        clock.now = 1000.0 + second
        series.record(200, 0.010)
        series.record(503 if second % 2 else 200, 0.010)
        series.record(404, 0.010)  # a client error is a request, not an error
    (figures,) = live.figures(5)
    assert (figures.model, figures.version) == ("echo", "2")
    assert (figures.requests, figures.errors) == (15, 3)  # seconds 5..9; 5, 7 and 9 failed once
    assert figures.as_json()["error_rate"] == pytest.approx(3 / 15, abs=1e-6)
    assert figures.requests_per_s == pytest.approx(3.0)
    (whole,) = live.figures(600)
    assert (whole.requests, whole.errors) == (30, 5)
    assert whole.requests_per_s == pytest.approx(30 / 9)  # the stats are 9 s old

    clock.now += stats.HORIZON_S  # every bucket is stale now, and gets reused
    assert live.figures(600) == []
    series.record(200, 0.5)
    (fresh,) = live.figures(60)
    assert (fresh.requests, fresh.errors) == (1, 0)


def test_percentiles_are_within_a_bin() -> None:
    clock = Clock()
    live = stats.LiveStats(clock)
    series = live.series("m", "1")
    latencies_ms = [1 + i * 0.37 for i in range(1000)]  # 1 .. 370 ms, spread over 3 seconds
    for i, ms in enumerate(latencies_ms):
        clock.now = 1000.0 + i // 400
        series.record(200, ms / 1000)
    (figures,) = live.figures(60)
    true = statistics.quantiles(latencies_ms, n=100)
    for estimate, q in ((figures.p50_ms, 50), (figures.p95_ms, 95), (figures.p99_ms, 99)):
        assert estimate == pytest.approx(true[q - 1], rel=0.09)
    assert figures.p50_ms < figures.p95_ms < figures.p99_ms


def test_extreme_latencies_stay_in_range() -> None:
    live = stats.LiveStats(Clock())
    live.series("m", "1").record(200, 0.0)
    live.series("m", "1").record(200, 3600.0)
    (figures,) = live.figures(1)
    assert 0 <= figures.p50_ms <= 0.06
    assert figures.p99_ms > 600_000


def test_the_window_is_bounded() -> None:
    live = stats.LiveStats(Clock())
    for bad in (0, 601):
        with pytest.raises(ValueError, match=r"1\.\.600"):
            live.figures(bad)


async def _send(url: str, headers: dict[str, str], model: str, count: int) -> list[float]:
    """``count`` chat requests, 16 at a time; each one's latency in ms as the client saw it."""
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        async def one() -> float:
            async with gate:
                answer = await client.post("/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": "count me"}]})
                assert answer.status_code in (200, 504), answer.text
                return answer.elapsed.total_seconds() * 1000

        return list(await asyncio.gather(*(one() for _ in range(count))))


def test_stats_match_what_the_gateway_answered(tmp_path: Path) -> None:
    with helpers.platform(tmp_path) as served:
        admin = httpx.Client(base_url=served.url, headers=served.headers, timeout=30)
        latencies = asyncio.run(_send(served.url, served.headers, "echo@2", 150))
        asyncio.run(_send(served.url, served.headers, "echo", 40))
        asyncio.run(_send(served.url, served.headers, "too-slow", 2))  # two timeouts
        bad = admin.post("/v1/chat/completions", json={"model": "echo@2", "messages": []})
        assert bad.status_code == 400  # refused before any version answered: not counted

        body = admin.get("/admin/stats", params={"window": 60}).json()
        assert (body["object"], body["window_s"]) == ("list", 60)
        rows = {(row["model"], row["version"]): row for row in body["data"]}
        assert set(rows) == {("echo", "1"), ("echo", "2"), ("too-slow", "1")}
        canary = rows[("echo", "2")]
        assert (canary["requests"], canary["errors"], canary["error_rate"]) == (150, 0, 0.0)
        assert rows[("echo", "1")]["requests"] == 40
        assert 0 < canary["p50_ms"] <= canary["p95_ms"] <= max(latencies) * 1.1
        assert canary["requests_per_s"] > 0
        slow = rows[("too-slow", "1")]
        assert (slow["requests"], slow["errors"], slow["error_rate"]) == (2, 2, 1.0)
        assert slow["p50_ms"] >= 900  # the 1 s deadline

        for window in ("0", "601", "soon"):
            refused = admin.get("/admin/stats", params={"window": window})
            assert refused.status_code == 400
            assert refused.json()["error"]["param"] == "window"
        assert httpx.get(f"{served.url}/admin/stats").status_code == 401
        metrics = admin.get("/metrics").text
        assert ('uplion_requests_total{model="echo",protocol="openai-chat",status="200",'
                'version="2"} 150.0') in metrics
        admin.close()
