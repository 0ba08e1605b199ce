"""Admission in Redis: its keys, its failures, the bound on a check's work, many processes.

The rules themselves, the same in memory and in Redis, are in test_admission_conformance.py.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from tests.gateway.test_admission_conformance import HOUR_BEFORE_MIDNIGHT, Clock, principal
from tests.ports import free_port
from tests.redisio.server import RedisProcess, own_redis
from uplion import redisio
from uplion.accounts.principal import Period, Quota, RateLimits
from uplion.gateway.admission import AdmissionUnavailable, RedisAdmission, Reservation, rules
from uplion.gateway.admission import redis_store as store

pytestmark = pytest.mark.redis

__all__ = ["own_redis"]

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def raw(clean_redis: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(clean_redis)
    yield client
    client.close()


def snapshot(raw: redis.Redis) -> dict[bytes, bytes]:
    return {key: cast(bytes, raw.dump(key)) for key in raw.scan_iter()}


async def test_no_rules_never_calls_redis(raw: redis.Redis) -> None:
    unreachable = RedisAdmission(f"redis://127.0.0.1:{free_port()}/0")
    decision = await unreachable.admit(principal(), "r-1", 10)
    assert decision.reservation is not None
    await unreachable.settle(decision.reservation, 3)
    await unreachable.close()
    assert raw.dbsize() == 0


async def test_unreachable_redis_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    unreachable = RedisAdmission(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    with pytest.raises(AdmissionUnavailable, match="Redis did not answer"):
        await unreachable.start()
    caller = principal(token=RateLimits(tokens_per_minute=10))
    with pytest.raises(AdmissionUnavailable):
        await unreachable.admit(caller, "r-1", 1)
    with caplog.at_level(logging.WARNING, logger=store.__name__):
        await unreachable.settle(Reservation(caller, "r-1", 5, HOUR_BEFORE_MIDNIGHT), 1)
        assert await unreachable.auth_wait("192.0.2.1") == 0  # fails open
        await unreachable.auth_failed("192.0.2.1")
    assert "settling request r-1 failed, its 5 reserved tokens stay charged" in caplog.text
    assert "failed authentications of 192.0.2.1 not checked" in caplog.text
    assert "a failed authentication of 192.0.2.1 was not counted" in caplog.text
    await unreachable.close()


async def test_keys_and_their_expiries(clean_redis: str, raw: redis.Redis) -> None:
    gate = RedisAdmission(clean_redis)  # the server's clock
    caller = principal(token=RateLimits(requests_per_minute=5),
                       user=RateLimits(tokens_per_minute=9), user_quota=Quota(100, "hour"))
    decision = await gate.admit(caller, "r-1", 7)
    assert decision.reservation is not None
    await gate.settle(decision.reservation, 3)
    await gate.auth_failed("192.0.2.1")
    await gate.close()
    second = decision.reservation.admitted_ms // 1000
    hour = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%Y-%m-%dT%H")
    assert sorted(raw.keys()) == [
        b"uplion:authfail:192.0.2.1",
        f"uplion:quota:u:user-1:{hour}".encode(), b"uplion:rl:t:tok-a", b"uplion:rl:u:user-1",
    ]
    assert raw.get(f"uplion:quota:u:user-1:{hour}") == b"3"
    assert raw.hgetall("uplion:rl:t:tok-a") == {f"r:{second}".encode(): b"1"}
    assert raw.hgetall("uplion:rl:u:user-1") == {f"t:{second}".encode(): b"3"}
    for key in (b"uplion:rl:t:tok-a", b"uplion:rl:u:user-1", b"uplion:authfail:192.0.2.1"):
        assert 60_000 < raw.pttl(key) <= 62_000
    assert 86_400 < raw.ttl(f"uplion:quota:u:user-1:{hour}") <= 86_400 + 3_600


async def test_buckets_that_left_the_window_are_deleted(clean_redis: str, raw: redis.Redis) -> None:
    clock = Clock()
    gate = RedisAdmission(clean_redis, clock=clock)
    caller = principal(token=RateLimits(requests_per_minute=100, tokens_per_minute=1000))
    for _ in range(70):
        assert (await gate.admit(caller, f"r-{clock.ms}", 1)).allowed
        clock.advance(1_000)
    await gate.close()
    assert raw.hlen("uplion:rl:t:tok-a") == 2 * rules.SPAN  # 'r:' and 't:' of 61 buckets


async def test_a_refused_check_costs_the_same_at_10000_requests(
    clean_redis: str, raw: redis.Redis
) -> None:
    """The refused path reads one HASH of at most 2 * SPAN fields per window and one counter
    per quota, however many requests the window holds (counted with INFO commandstats)."""
    caller = principal(token=RateLimits(requests_per_minute=20_000, tokens_per_minute=10_050),
                       user_quota=Quota(10**9, "day"))

    async def refused_check_after(requests: int) -> dict[str, int]:
        raw.flushall()
        clock = Clock()
        gate = RedisAdmission(clean_redis, clock=clock)
        for start in range(0, requests, 200):  # spread over the whole window
            batch = range(start, min(requests, start + 200))
            admitted = await asyncio.gather(*(gate.admit(caller, f"r-{n}", 1) for n in batch))
            assert all(decision.allowed for decision in admitted)
            clock.advance(59_000 * len(batch) // requests)
        assert raw.hlen("uplion:rl:t:tok-a") <= 2 * rules.SPAN
        raw.config_resetstat()
        refused = await gate.admit(caller, "big", 10_050 - requests + 1)
        assert not refused.allowed
        assert refused.retry_after_s is not None
        stats = raw.info("commandstats")
        await gate.close()
        return {name.removeprefix("cmdstat_"): figures["calls"] for name, figures in stats.items()
                if name not in ("cmdstat_config|resetstat", "cmdstat_info")}

    few, many = await refused_check_after(10), await refused_check_after(10_000)
    assert many == few == {"evalsha": 1, "hgetall": 1, "get": 1}


async def test_a_refusal_reserves_nothing_in_redis(clean_redis: str, raw: redis.Redis) -> None:
    gate = RedisAdmission(clean_redis)
    caller = principal(token=RateLimits(requests_per_minute=5, tokens_per_minute=100),
                       token_quota=Quota(50, "month"))
    assert (await gate.admit(caller, "r-1", 40)).allowed
    before = snapshot(raw)
    assert not (await gate.admit(caller, "r-2", 40)).allowed
    assert snapshot(raw) == before
    await gate.close()


async def test_the_scripts_come_back_after_a_script_flush(clean_redis: str,
                                                          raw: redis.Redis) -> None:
    clock = Clock()
    gate = RedisAdmission(clean_redis, clock=clock)
    await gate.start()
    raw.script_flush()
    caller = principal(token=RateLimits(tokens_per_minute=100))
    decision = await gate.admit(caller, "r-1", 10)
    assert decision.reservation is not None
    raw.script_flush()
    await gate.settle(decision.reservation, 4)
    assert raw.hget("uplion:rl:t:tok-a", f"t:{clock.ms // 1000}") == b"4"
    await gate.close()


async def test_a_held_reservation_has_a_record_until_settled(
    clean_redis: str, raw: redis.Redis
) -> None:
    clock = Clock()
    gate = RedisAdmission(clean_redis, clock=clock)
    caller = principal(token=RateLimits(requests_per_minute=5, tokens_per_minute=100),
                       token_quota=Quota(1000, "day"))
    decision = await gate.admit(caller, "r-1", 40, hold_s=12)
    assert decision.reservation is not None
    assert decision.reservation.held
    record = "uplion:reservation:r-1"
    assert raw.zrange("uplion:reservations", 0, -1, withscores=True) == [
        (b"r-1", clock.ms + 12_000)]
    assert raw.hget(record, "state") == b"held"
    assert 12_000 < raw.pttl(record) <= 12_000 + rules.QUOTA_GRACE_S * 1000
    await gate.settle(decision.reservation, 25)
    assert raw.zcard("uplion:reservations") == 0
    assert raw.hget(record, "state") == b"settled"
    assert 0 < raw.pttl(record) <= rules.SETTLED_KEEP_MS
    assert raw.get("uplion:quota:t:tok-a:2025-06-30") == b"25"
    await gate.close()


async def test_an_admission_survives_a_restart_of_redis(own_redis: RedisProcess) -> None:
    """Connections the pool kept from before a restart are dead: an admission sent on one is
    sent again on a new one (safe: a held reservation is made once), not refused."""
    gate = RedisAdmission(own_redis.url)
    caller = principal(token_quota=Quota(10**6, "day"))

    async def admit_all(prefix: str) -> list[bool]:
        decisions = await asyncio.gather(*(gate.admit(caller, f"{prefix}-{n}", 10, hold_s=30)
                                           for n in range(20)))
        return [decision.allowed for decision in decisions]

    try:
        assert await admit_all("before") == [True] * 20  # the pool holds 20 connections now
        own_redis.restart()
        assert await admit_all("after") == [True] * 20
    finally:
        await gate.close()


async def test_failed_authentications_are_shared_by_gateways(clean_redis: str) -> None:
    clock = Clock()
    gateways = [RedisAdmission(clean_redis, clock=clock, auth_failures_per_minute=4)
                for _ in range(2)]
    for index in range(4):
        await gateways[index % 2].auth_failed("2001:db8::/64")
    assert [await gate.auth_wait("2001:db8::/64") for gate in gateways] == [61.0, 61.0]
    for gate in gateways:
        await gate.close()


def test_the_lua_calendar_agrees_with_python(raw: redis.Redis) -> None:
    script = raw.register_script(
        redisio.source("uplion.gateway.admission", "calendar.lua")
        + "\nlocal label, finish = period(tonumber(ARGV[1]), ARGV[2])\nreturn {label, finish}"
    )
    boundaries = [0, 951_782_399, 951_782_400, 951_868_799, 951_868_800, 1_704_067_199,
                  1_709_164_800, 1_709_251_199, 4_107_542_399, 4_107_542_400]
    rng = random.Random(7)
    moments = boundaries + [rng.randrange(0, 4_102_444_800) for _ in range(300)]
    periods: tuple[Period, ...] = ("hour", "day", "month")
    for seconds in moments:
        for name in periods:
            label, finish = script(args=[seconds, name])
            assert (label.decode(), finish) == rules.period(seconds, name), (seconds, name)


CHILD = """
import asyncio, sys
from uplion.accounts.principal import Principal, RateLimits
from uplion.gateway.admission import RedisAdmission

async def main(url: str, name: str, count: int) -> None:
    gate = RedisAdmission(url)
    await gate.start()
    caller = Principal(token_id="shared", token_hash="h", user_id="u", user_name="u",
                       role="member", token_limits=RateLimits(requests_per_minute=100))
    print("ready", flush=True)
    sys.stdin.readline()
    decisions = await asyncio.gather(
        *(gate.admit(caller, f"{name}-{index}", 1) for index in range(count))
    )
    await gate.close()
    print(sum(decision.allowed for decision in decisions), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_three_processes_admit_exactly_the_limit(clean_redis: str, raw: redis.Redis) -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, clean_redis, f"p{index}", str(count)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for index, count in enumerate((167, 167, 166))
    ]
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    admitted = [int(child.communicate(timeout=60)[0]) for child in children]
    assert [child.returncode for child in children] == [0, 0, 0]
    assert sum(admitted) == 100
    window = raw.hgetall("uplion:rl:t:shared")
    assert sum(int(count) for count in window.values()) == 100
