"""``uplion rollout evaluate``: the gate of a canary step, on the gateway's live stats or, with
``--prometheus``, on every gateway's figures from Prometheus.

A version passes when, over the last ``window`` seconds, it answered at least ``min_requests``
requests, at most ``max_error_rate`` of them with an error (5xx or a timeout), and its 95th
percentile latency is at most ``max_p95_ms``; with a ``baseline`` version (the stable one), its
p95 is also at most ``max_p95_ratio`` times the baseline's. ``drive`` first sends that many
pinned requests, so that a quiet environment has figures to judge (with Prometheus, the verdict
then waits up to ``SETTLE_S`` for a scrape that has seen them).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from uplion.rollout.gateway import Gateway
from uplion.rollout.prometheus import Prometheus
from uplion.rollout.smoke import pinned_requests

DRIVE_CONCURRENCY = 8
SETTLE_S = 60.0
"""How long a driven evaluation waits for Prometheus to have scraped the driven requests."""


@dataclass(frozen=True)
class Gates:
    max_error_rate: float = 0.01
    max_p95_ms: float = 2000.0
    min_requests: int = 20
    max_p95_ratio: float = 1.5


@dataclass(frozen=True)
class Verdict:
    model: str
    version: str
    window_s: int
    figures: dict[str, Any]
    gates: Gates
    failures: list[str] = field(default_factory=list)
    source: str = "gateway"
    baseline: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        f = self.figures
        p95 = "-" if f["p95_ms"] is None else f"{f['p95_ms']:.1f} ms"
        line = (f"evaluate {self.model}@{self.version} over {self.window_s} s ({self.source}): "
                f"{f['requests']} requests, {f['errors']} errors "
                f"(rate {f['error_rate']:.4f} <= {self.gates.max_error_rate}), "
                f"p95 {p95} (<= {self.gates.max_p95_ms:g} ms)")
        if self.passed:
            return f"{line}: passed"
        return f"{line}: FAILED: {'; '.join(self.failures)}"

    def as_json(self) -> dict[str, Any]:
        return {"step": "evaluate", "model": self.model, "version": self.version,
                "window_s": self.window_s, **self.figures,
                "max_error_rate": self.gates.max_error_rate,
                "max_p95_ms": self.gates.max_p95_ms, "min_requests": self.gates.min_requests,
                "source": self.source, "baseline": self.baseline,
                "max_p95_ratio": self.gates.max_p95_ratio if self.baseline else None,
                "passed": self.passed, "failures": self.failures}


def judge(
    model: str, version: str, window_s: int, stats: list[dict[str, Any]], gates: Gates
) -> Verdict:
    """The verdict on ``model@version`` from ``GET /admin/stats``'s entries."""
    entry = next((e for e in stats if e["model"] == model and e["version"] == version), None)
    figures: dict[str, Any] = {"requests": 0, "errors": 0, "error_rate": 0.0,
                               "requests_per_s": 0.0, "p50_ms": None, "p95_ms": None}
    if entry is not None:
        figures.update({key: entry[key] for key in figures})
    return judge_figures(model, version, window_s, figures, gates)


def judge_figures(
    model: str, version: str, window_s: int, figures: dict[str, Any], gates: Gates,
    source: str = "gateway", baseline: tuple[str, dict[str, Any]] | None = None,
) -> Verdict:
    """The verdict on ``model@version``'s ``figures``; ``baseline``: another version's name and
    figures, whose p95 this one's may exceed by ``gates.max_p95_ratio`` at most."""
    failures = []
    if figures["requests"] < gates.min_requests:
        failures.append(f"{figures['requests']} requests seen, fewer than the "
                        f"{gates.min_requests} needed")
    if figures["error_rate"] > gates.max_error_rate:
        failures.append(f"error rate {figures['error_rate']:.4f} above {gates.max_error_rate}")
    if figures["p95_ms"] is not None and figures["p95_ms"] > gates.max_p95_ms:
        failures.append(f"p95 {figures['p95_ms']:.1f} ms above {gates.max_p95_ms:g} ms")
    if baseline is not None:
        other, theirs = baseline
        figures = {**figures, "baseline_p95_ms": theirs["p95_ms"]}
        mine, limit = figures["p95_ms"], theirs["p95_ms"]
        if mine is not None and limit is not None and mine > gates.max_p95_ratio * limit:
            failures.append(f"p95 {mine:.1f} ms above {gates.max_p95_ratio:g} times version "
                            f"{other}'s {limit:.1f} ms")
    return Verdict(model, version, window_s, figures, gates, failures, source,
                   baseline[0] if baseline else None)


async def evaluate(
    gateway: Gateway, model: str, version: str, window_s: int, gates: Gates, drive: int = 0,
    prometheus: Prometheus | None = None, baseline: str | None = None,
) -> Verdict:
    """Judge ``model@version`` on the gateway's stats, or on Prometheus' when given."""
    driven = 0
    if drive:
        driven = len(await pinned_requests(gateway, model, version, drive, DRIVE_CONCURRENCY))
    if prometheus is None:
        stats = await gateway.stats(window_s)
        if baseline is None:
            return judge(model, version, window_s, stats, gates)
        mine, theirs = (judge(model, v, window_s, stats, gates).figures
                        for v in (version, baseline))
        return judge_figures(model, version, window_s, mine, gates, "gateway",
                             (baseline, theirs))
    figures = await _settled(prometheus, model, version, window_s, driven)
    other = None
    if baseline is not None:
        other = (baseline, await prometheus.figures(model, baseline, window_s))
    return judge_figures(model, version, window_s, figures, gates, "prometheus", other)


async def _settled(
    prometheus: Prometheus, model: str, version: str, window_s: int, driven: int
) -> dict[str, Any]:
    """Prometheus' figures once they count the ``driven`` requests (or after ``SETTLE_S``)."""
    give_up = time.monotonic() + SETTLE_S
    while True:
        figures = await prometheus.figures(model, version, window_s)
        if figures["requests"] >= driven or time.monotonic() >= give_up:
            return figures
        await asyncio.sleep(1.0)
