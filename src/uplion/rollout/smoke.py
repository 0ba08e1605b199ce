"""``uplion rollout smoke``: real requests pinned to one model version, each of which must succeed
with a non-empty answer from that version; ``pinned_requests`` also drives an evaluation."""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass
from typing import Any

from uplion.rollout.gateway import Answer, Gateway


async def pinned_requests(
    gateway: Gateway, model: str, version: str, count: int, concurrency: int = 1,
    serves: str | None = None,
) -> list[Answer]:
    """``count`` requests to ``model@version``, at most ``concurrency`` at a time, in order."""
    kind = serves or await gateway.serves(model, version)
    gate = asyncio.Semaphore(concurrency)

    async def one(number: int) -> Answer:
        async with gate:
            return await gateway.infer(
                model, version, kind, f"uplion rollout check {number} of {count}: say hello.")

    return list(await asyncio.gather(*(one(n + 1) for n in range(count))))


@dataclass(frozen=True)
class SmokeReport:
    model: str
    version: str
    serves: str
    answers: list[Answer]

    @property
    def passed(self) -> bool:
        return bool(self.answers) and all(answer.ok for answer in self.answers)

    def summary(self) -> str:
        good = sum(answer.ok for answer in self.answers)
        verdict = "passed" if self.passed else "FAILED"
        line = (f"smoke {self.model}@{self.version} ({self.serves}): {good}/{len(self.answers)} "
                f"requests answered")
        if self.answers:
            latencies = [answer.latency_ms for answer in self.answers]
            line += (f", median {statistics.median(latencies):.1f} ms, "
                     f"max {max(latencies):.1f} ms")
        return f"{line}: {verdict}"

    def failures(self) -> list[str]:
        return [f"request {n}: {answer.status or 'no answer'} {answer.detail}".rstrip()
                for n, answer in enumerate(self.answers, 1) if not answer.ok]

    def as_json(self) -> dict[str, Any]:
        return {"step": "smoke", "model": self.model, "version": self.version,
                "serves": self.serves, "requests": len(self.answers),
                "succeeded": sum(answer.ok for answer in self.answers),
                "passed": self.passed, "failures": self.failures()}


async def smoke(
    gateway: Gateway, model: str, version: str | None, requests: int
) -> SmokeReport:
    """``requests`` requests to ``model@version`` (the stable version if None), one after the
    other."""
    if version is None:
        version = str((await gateway.traffic(model))["stable"])
    serves = await gateway.serves(model, version)
    answers = await pinned_requests(gateway, model, version, requests, serves=serves)
    return SmokeReport(model, version, serves, answers)
