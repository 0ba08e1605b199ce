"""What admission costs a request: admit + settle latency and throughput, Redis vs memory.

For Redis (a redis-server of its own, Debian's package, in a temp dir) and memory, at concurrency
1 and 16, it prints p50/p99 latency (µs) of one admit followed by its settle, and ops/s, for a
principal that every rule applies to (token and user RPM and TPM, token and user quotas: the
costliest case), with limits high enough that nothing is refused. Each level starts on empty
windows; a window fills up to one minute of requests as the run goes.

    .venv/bin/python bench/admission.py [--ops 20000] [--concurrency 1,16]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.services import redis_server
from uplion.accounts.principal import Principal, Quota, RateLimits
from uplion.gateway.admission import Admission, MemoryAdmission, RedisAdmission

_HIGH = 10**12
CALLER = Principal(
    token_id="bench", token_hash="bench", user_id="bench-user", user_name="bench", role="member",
    token_limits=RateLimits(requests_per_minute=_HIGH, tokens_per_minute=_HIGH),
    user_limits=RateLimits(requests_per_minute=_HIGH, tokens_per_minute=_HIGH),
    token_quota=Quota(_HIGH, "day"), user_quota=Quota(_HIGH, "month"),
)
ESTIMATE, USED = 500, 120


@dataclass(frozen=True)
class Figures:
    p50_us: float
    p99_us: float
    ops: float


def flush(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.flushall()


async def measure(gate: Admission, ops: int, concurrency: int, run: str) -> Figures:
    latencies: list[int] = []
    numbers = iter(range(ops))

    async def worker() -> None:
        for number in numbers:
            request_id = f"{run}-{number}"
            started = time.perf_counter_ns()
            decision = await gate.admit(CALLER, request_id, ESTIMATE)
            if not decision.allowed or decision.reservation is None:
                raise RuntimeError(f"refused: {decision.message}")
            await gate.settle(decision.reservation, USED)
            latencies.append(time.perf_counter_ns() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Figures(latencies[len(latencies) // 2] / 1000,
                   latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] / 1000,
                   ops / elapsed)


async def bench(name: str, url: str | None, ops: int, levels: list[int]) -> dict[int, Figures]:
    results: dict[int, Figures] = {}
    for level in levels:
        if url is not None:
            flush(url)
        gate: Admission = MemoryAdmission() if url is None else RedisAdmission(url)
        await gate.start()
        try:
            await measure(gate, min(ops, 1000), level, f"{name}-warm-{level}")
            results[level] = await measure(gate, ops, level, f"{name}-{level}")
        finally:
            await gate.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ops", type=int, default=20_000, help="admit+settle pairs per level")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated levels")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]
    results: dict[str, dict[int, Figures]] = {}
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url:
        results["redis"] = asyncio.run(bench("redis", url, args.ops, levels))
    results["memory"] = asyncio.run(bench("memory", None, args.ops, levels))
    print(f"{'store':<8} {'conc':>5} {'p50 µs':>9} {'p99 µs':>9} {'ops/s':>9}")
    for name, by_level in results.items():
        for level, figures in by_level.items():
            print(f"{name:<8} {level:>5} {figures.p50_us:>9.1f} {figures.p99_us:>9.1f} "
                  f"{figures.ops:>9.0f}")


if __name__ == "__main__":
    main()
