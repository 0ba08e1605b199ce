"""``uplion rollout evaluate``: the gate of a canary step, on the gateway's live stats.

A version passes when, over the last ``window`` seconds, it answered at least ``min_requests``
requests, at most ``max_error_rate`` of them with an error (5xx or a timeout), and its 95th
percentile latency is at most ``max_p95_ms``. ``drive`` first sends that many pinned requests,
so that a quiet environment has figures to judge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from uplion.rollout.gateway import Gateway
from uplion.rollout.smoke import pinned_requests

DRIVE_CONCURRENCY = 8


@dataclass(frozen=True)
class Gates:
    max_error_rate: float = 0.01
    max_p95_ms: float = 2000.0
    min_requests: int = 20


@dataclass(frozen=True)
class Verdict:
    model: str
    version: str
    window_s: int
    figures: dict[str, Any]
    gates: Gates
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        f = self.figures
        p95 = "-" if f["p95_ms"] is None else f"{f['p95_ms']:.1f} ms"
        line = (f"evaluate {self.model}@{self.version} over {self.window_s} s: "
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
    failures = []
    if figures["requests"] < gates.min_requests:
        failures.append(f"{figures['requests']} requests seen, fewer than the "
                        f"{gates.min_requests} needed")
    if figures["error_rate"] > gates.max_error_rate:
        failures.append(f"error rate {figures['error_rate']:.4f} above {gates.max_error_rate}")
    if figures["p95_ms"] is not None and figures["p95_ms"] > gates.max_p95_ms:
        failures.append(f"p95 {figures['p95_ms']:.1f} ms above {gates.max_p95_ms:g} ms")
    return Verdict(model, version, window_s, figures, gates, failures)


async def evaluate(
    gateway: Gateway, model: str, version: str, window_s: int, gates: Gates, drive: int = 0
) -> Verdict:
    if drive:
        await pinned_requests(gateway, model, version, drive, DRIVE_CONCURRENCY)
    return judge(model, version, window_s, await gateway.stats(window_s), gates)
