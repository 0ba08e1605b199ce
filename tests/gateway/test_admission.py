"""Admission: rate limits and quotas, the same against Redis and in memory."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from tests.ports import free_port
from uplion.accounts.principal import Period, Principal, Quota, RateLimits
from uplion.gateway import admission
from uplion.gateway.admission import (
    Admission,
    AdmissionUnavailable,
    Decision,
    MemoryAdmission,
    RedisAdmission,
)

SRC = Path(__file__).resolve().parents[2] / "src"
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d{1,3})?s|\d+ms)$")


def principal(
    token_id: str = "tok-a",
    *,
    token: RateLimits | None = None,
    user: RateLimits | None = None,
    token_quota: Quota | None = None,
    user_quota: Quota | None = None,
) -> Principal:
    return Principal(
        token_id=token_id, token_hash=f"hash-{token_id}", user_id="user-1", user_name="bob",
        role="member", token_limits=token or RateLimits(), user_limits=user or RateLimits(),
        token_quota=token_quota, user_quota=user_quota,
    )


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def gate(request: pytest.FixtureRequest) -> AsyncIterator[Admission]:
    instance: Admission
    if request.param == "memory":
        instance = MemoryAdmission()
    else:
        instance = RedisAdmission(request.getfixturevalue("clean_redis"))
    await instance.start()
    yield instance
    await instance.close()


@pytest.fixture
def raw(clean_redis: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(clean_redis)
    yield client
    client.close()


def snapshot(raw: redis.Redis) -> dict[bytes, bytes]:
    return {key: cast(bytes, raw.dump(key)) for key in raw.scan_iter()}


def older(raw: redis.Redis, log: str, ages_ms: dict[bytes, int]) -> None:
    """Move requests back in a window's log, as if they had been admitted that much earlier."""
    for member, age in ages_ms.items():
        raw.zincrby(log, -age, member)


async def admit_many(gate: Admission, caller: Principal, count: int, tokens: int = 1,
                     prefix: str = "r") -> list[Decision]:
    return list(await asyncio.gather(
        *(gate.admit(caller, f"{prefix}-{index}", tokens) for index in range(count))
    ))


async def test_requests_per_minute_are_exact_under_concurrency(gate: Admission) -> None:
    caller = principal(token=RateLimits(requests_per_minute=100))
    decisions = await admit_many(gate, caller, 500)
    assert sum(decision.allowed for decision in decisions) == 100
    refused = [decision for decision in decisions if not decision.allowed]
    assert {decision.code for decision in refused} == {"rate_limit_exceeded"}
    assert all(decision.headers["x-ratelimit-remaining-requests"] == "0" for decision in refused)
    assert refused[0].message.startswith(
        "Rate limit reached for requests per minute on token tok-a (limit 100). Retry in "
    )


async def test_user_limit_is_shared_by_the_users_tokens(gate: Admission) -> None:
    limits = RateLimits(requests_per_minute=5)
    first = principal("tok-a", token=RateLimits(requests_per_minute=10), user=limits)
    second = principal("tok-b", user=limits)
    decisions = [await gate.admit(first, f"a-{index}", 1) for index in range(3)]
    decisions += [await gate.admit(second, f"b-{index}", 1) for index in range(3)]
    assert [decision.allowed for decision in decisions] == [True] * 5 + [False]
    assert "on user bob (limit 5)" in decisions[-1].message
    # The tightest limit is the user's: 10 - 3 left for the token, 5 - 3 for the user.
    assert decisions[2].headers["x-ratelimit-limit-requests"] == "5"
    assert decisions[2].headers["x-ratelimit-remaining-requests"] == "2"


async def test_settling_below_the_estimate_frees_tokens_per_minute(gate: Admission) -> None:
    caller = principal(token=RateLimits(tokens_per_minute=100))
    assert (await gate.admit(caller, "r-1", 60)).allowed
    refused = await gate.admit(caller, "r-2", 60)
    assert not refused.allowed
    assert refused.code == "rate_limit_exceeded"
    assert "tokens per minute on token tok-a (limit 100, used 60, requested 60)" in refused.message
    assert refused.headers["x-ratelimit-remaining-tokens"] == "40"
    await gate.settle(caller, "r-1", 60, 10)
    admitted = await gate.admit(caller, "r-3", 60)
    assert admitted.allowed
    assert admitted.headers["x-ratelimit-remaining-tokens"] == "30"
    await gate.settle(caller, "r-3", 60, 90)  # more than estimated: charged in full
    assert not (await gate.admit(caller, "r-4", 1)).allowed


async def test_a_request_above_the_tokens_per_minute_never_passes(gate: Admission) -> None:
    decision = await gate.admit(principal(token=RateLimits(tokens_per_minute=100)), "r-1", 150)
    assert not decision.allowed
    assert decision.code == "rate_limit_exceeded"
    assert decision.message == (
        "Request too large for tokens per minute on token tok-a: it may use up to 150 tokens, "
        "the limit is 100."
    )
    assert decision.retry_after_s is None
    assert "Retry-After" not in decision.headers


async def test_quota_reserves_settles_and_runs_out(gate: Admission) -> None:
    caller = principal(token_quota=Quota(100, "day"))
    assert (await gate.admit(caller, "r-1", 70)).allowed
    refused = await gate.admit(caller, "r-2", 40)
    assert not refused.allowed
    assert refused.code == "insufficient_quota"
    assert refused.message.startswith(
        "Quota exhausted for this day on token tok-a: 70 of 100 tokens used, this request may "
        "use up to 40. Retry in "
    )
    now = datetime.datetime.now(datetime.UTC)
    midnight = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                          microsecond=0)
    assert refused.retry_after_s is not None
    assert abs(refused.retry_after_s - (midnight - now).total_seconds()) < 5

    await gate.settle(caller, "r-1", 70, 20)  # the client went away: charged what it got
    assert (await gate.admit(caller, "r-2", 40)).allowed  # 60 used
    assert not (await gate.admit(caller, "r-3", 50)).allowed
    await gate.settle(caller, "r-2", 40, 80)  # 100 used
    assert (await gate.admit(caller, "r-4", 0)).allowed
    assert not (await gate.admit(caller, "r-5", 1)).allowed


async def test_quota_refuses_a_request_larger_than_the_whole_budget(gate: Admission) -> None:
    decision = await gate.admit(principal(user_quota=Quota(100, "month")), "r-1", 101)
    assert decision.code == "insufficient_quota"
    assert decision.message == (
        "Request too large for the quota of user bob: it may use up to 101 tokens, the quota "
        "is 100 per month."
    )
    assert decision.retry_after_s is None


async def test_headers_are_openais(gate: Admission) -> None:
    caller = principal(
        token=RateLimits(requests_per_minute=3, tokens_per_minute=1000),
        user=RateLimits(requests_per_minute=50, tokens_per_minute=300),
    )
    decision = await gate.admit(caller, "r-1", 100)
    assert decision == Decision(True, None, "", None, {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "300",
        "x-ratelimit-remaining-tokens": "200",
        "x-ratelimit-reset-tokens": "1m0s",
    })
    await admit_many(gate, caller, 2, 100, prefix="more")
    refused = await gate.admit(caller, "r-4", 100)
    assert not refused.allowed
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        assert DURATION.match(refused.headers[name]), refused.headers[name]
    assert refused.headers["Retry-After"] == "60"


async def test_retry_after_is_when_the_oldest_request_leaves(gate: Admission) -> None:
    caller = principal(token=RateLimits(requests_per_minute=2))
    await admit_many(gate, caller, 2)
    refused = await gate.admit(caller, "r-3", 1)
    assert refused.retry_after_s is not None
    assert 59 < refused.retry_after_s <= 60
    assert refused.headers["Retry-After"] == "60"
    assert refused.message.endswith("Retry in 60 s.")


async def test_a_refused_request_reserves_nothing(gate: Admission) -> None:
    caller = principal(
        token=RateLimits(requests_per_minute=10, tokens_per_minute=1000),
        user_quota=Quota(100, "hour"),
    )
    assert (await gate.admit(caller, "r-1", 60)).allowed
    refused = await gate.admit(caller, "r-2", 60)  # the quota refuses; the window would admit
    assert refused.code == "insufficient_quota"
    assert refused.headers["x-ratelimit-remaining-requests"] == "9"
    admitted = await gate.admit(caller, "r-3", 40)  # exactly what is left of the quota
    assert admitted.allowed
    assert admitted.headers["x-ratelimit-remaining-requests"] == "8"
    assert admitted.headers["x-ratelimit-remaining-tokens"] == "900"


async def test_no_rules_admits_freely(gate: Admission) -> None:
    decision = await gate.admit(principal(), "r-1", 10**6)
    assert decision == Decision(True, None, "", None, {})
    await gate.settle(principal(), "r-1", 10**6, 5)


@pytest.mark.parametrize(("request_id", "tokens"), [("", 1), ("r-1", -1)])
async def test_bad_arguments_are_refused(gate: Admission, request_id: str, tokens: int) -> None:
    with pytest.raises(ValueError, match="must not be"):
        await gate.admit(principal(), request_id, tokens)


@pytest.mark.redis
async def test_no_rules_never_calls_redis(raw: redis.Redis) -> None:
    unreachable = RedisAdmission(f"redis://127.0.0.1:{free_port()}/0")
    assert (await unreachable.admit(principal(), "r-1", 10)).allowed
    await unreachable.settle(principal(), "r-1", 10, 3)
    await unreachable.close()
    assert raw.dbsize() == 0


@pytest.mark.redis
async def test_unreachable_redis_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    unreachable = RedisAdmission(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    with pytest.raises(AdmissionUnavailable, match="Redis did not answer"):
        await unreachable.start()
    caller = principal(token=RateLimits(tokens_per_minute=10))
    with pytest.raises(AdmissionUnavailable):
        await unreachable.admit(caller, "r-1", 1)
    with caplog.at_level(logging.WARNING, logger=admission.__name__):
        await unreachable.settle(caller, "r-1", 5, 1)
    assert "settling request r-1 failed, its 5 reserved tokens stay charged" in caplog.text
    await unreachable.close()


@pytest.mark.redis
async def test_keys_and_their_expiries(clean_redis: str, raw: redis.Redis) -> None:
    gate = RedisAdmission(clean_redis)
    caller = principal(token=RateLimits(requests_per_minute=5),
                       user=RateLimits(tokens_per_minute=9), user_quota=Quota(100, "hour"))
    assert (await gate.admit(caller, "r-1", 7)).allowed
    await gate.settle(caller, "r-1", 7, 3)
    await gate.close()
    hour = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H")
    assert sorted(raw.keys()) == [
        f"uplion:quota:u:user-1:{hour}".encode(),
        b"uplion:rl:t:tok-a:req", b"uplion:rl:u:user-1:req", b"uplion:rl:u:user-1:tok",
    ]
    assert raw.get(f"uplion:quota:u:user-1:{hour}") == b"3"
    assert raw.hgetall("uplion:rl:u:user-1:tok") == {b"r-1": b"3", b"": b"3"}
    for key in (b"uplion:rl:t:tok-a:req", b"uplion:rl:u:user-1:req", b"uplion:rl:u:user-1:tok"):
        assert 60_000 < raw.pttl(key) <= 61_000
    assert 86_400 < raw.ttl(f"uplion:quota:u:user-1:{hour}") <= 86_400 + 3_600


@pytest.mark.redis
async def test_the_window_slides(clean_redis: str, raw: redis.Redis) -> None:
    """Requests leave the window 60 s after their admission, with their tokens."""
    gate = RedisAdmission(clean_redis)
    caller = principal(token=RateLimits(requests_per_minute=2, tokens_per_minute=100))
    await admit_many(gate, caller, 2, 30)
    log = "uplion:rl:t:tok-a:req"
    older(raw, log, {b"r-0": 50_000, b"r-1": 20_000})  # as if admitted 50 s and 20 s ago
    refused = await gate.admit(caller, "r-2", 30)
    assert refused.headers["Retry-After"] == "10"
    assert 9 < (refused.retry_after_s or 0) <= 10
    older(raw, log, {b"r-0": 10_001})
    admitted = await gate.admit(caller, "r-3", 30)
    assert admitted.allowed
    assert raw.zrange(log, 0, -1) == [b"r-1", b"r-3"]
    assert raw.hgetall("uplion:rl:t:tok-a:tok") == {b"r-1": b"30", b"r-3": b"30", b"": b"60"}
    await gate.close()


@pytest.mark.redis
async def test_a_refusal_writes_nothing_to_redis(clean_redis: str, raw: redis.Redis) -> None:
    gate = RedisAdmission(clean_redis)
    caller = principal(token=RateLimits(requests_per_minute=5, tokens_per_minute=100),
                       token_quota=Quota(50, "month"))
    assert (await gate.admit(caller, "r-1", 40)).allowed
    before = snapshot(raw)
    assert not (await gate.admit(caller, "r-2", 40)).allowed
    assert snapshot(raw) == before
    await gate.close()


@pytest.mark.redis
async def test_the_scripts_come_back_after_a_script_flush(clean_redis: str,
                                                          raw: redis.Redis) -> None:
    gate = RedisAdmission(clean_redis)
    await gate.start()
    raw.script_flush()
    caller = principal(token=RateLimits(tokens_per_minute=100))
    assert (await gate.admit(caller, "r-1", 10)).allowed
    raw.script_flush()
    await gate.settle(caller, "r-1", 10, 4)
    assert raw.hget("uplion:rl:t:tok-a:tok", "") == b"4"
    await gate.close()


@pytest.mark.redis
def test_the_lua_calendar_agrees_with_python(raw: redis.Redis) -> None:
    script = raw.register_script(
        admission._CALENDAR + "local label, finish = period(tonumber(ARGV[1]), ARGV[2])\n"
        "return {label, finish}"
    )
    boundaries = [0, 951_782_399, 951_782_400, 951_868_799, 951_868_800, 1_704_067_199,
                  1_709_164_800, 1_709_251_199, 4_107_542_399, 4_107_542_400]
    rng = random.Random(7)
    moments = boundaries + [rng.randrange(0, 4_102_444_800) for _ in range(300)]
    periods: tuple[Period, ...] = ("hour", "day", "month")
    for seconds in moments:
        for name in periods:
            label, finish = script(args=[seconds, name])
            assert (label.decode(), finish) == admission._period(seconds, name), (seconds, name)


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


@pytest.mark.redis
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
    assert raw.zcard("uplion:rl:t:shared:req") == 100
