"""One suite, two implementations: every rule of ``admission.rules`` in memory and in Redis.

Both run on a clock the test moves (``Admission(clock=...)``), so waits, headers and the period
boundaries are exact figures, the same for both.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from uplion.accounts.principal import Principal, Quota, RateLimits
from uplion.gateway.admission import (
    Admission,
    Decision,
    MemoryAdmission,
    RedisAdmission,
    Reservation,
)

HOUR_BEFORE_MIDNIGHT = 1_751_324_400_000  # 2025-06-30T23:00:00Z, in ms
MINUTE_BEFORE_MIDNIGHT = HOUR_BEFORE_MIDNIGHT + 59 * 60_000


class Clock:
    """Epoch milliseconds that move only when told."""

    def __init__(self, ms: int = HOUR_BEFORE_MIDNIGHT) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


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


def make(kind: str, clock: Clock, request: pytest.FixtureRequest, **options: int) -> Admission:
    if kind == "memory":
        return MemoryAdmission(clock=clock, **options)
    return RedisAdmission(request.getfixturevalue("clean_redis"), clock=clock, **options)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def gate(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Admission]:
    instance = make(request.param, clock, request, auth_failures_per_minute=3)
    await instance.start()
    yield instance
    await instance.close()


async def admit_many(gate: Admission, caller: Principal, count: int, tokens: int = 1,
                     prefix: str = "r") -> list[Decision]:
    return list(await asyncio.gather(
        *(gate.admit(caller, f"{prefix}-{index}", tokens) for index in range(count))
    ))


def held(decision: Decision) -> Reservation:
    assert decision.allowed, decision.message
    assert decision.reservation is not None
    return decision.reservation


async def test_requests_per_minute_are_exact_under_concurrency(gate: Admission) -> None:
    caller = principal(token=RateLimits(requests_per_minute=100))
    decisions = await admit_many(gate, caller, 500)
    assert sum(decision.allowed for decision in decisions) == 100
    refused = [decision for decision in decisions if not decision.allowed]
    assert {decision.code for decision in refused} == {"rate_limit_exceeded"}
    assert {decision.reservation for decision in refused} == {None}
    assert all(decision.headers["x-ratelimit-remaining-requests"] == "0" for decision in refused)
    assert refused[0].message == (
        "Rate limit reached for requests per minute on token tok-a (limit 100). Retry in 61 s."
    )


async def test_tokens_per_minute_are_exact_under_concurrency(gate: Admission) -> None:
    decisions = await admit_many(gate, principal(user=RateLimits(tokens_per_minute=1000)), 300, 7)
    assert sum(decision.allowed for decision in decisions) == 142  # 142 * 7 = 994 <= 1000 < 1001


async def test_quotas_are_exact_under_concurrency(gate: Admission) -> None:
    caller = principal(token_quota=Quota(100, "day"), user_quota=Quota(150, "month"))
    decisions = await admit_many(gate, caller, 300, 1)
    assert sum(decision.allowed for decision in decisions) == 100
    other = principal("tok-b", user_quota=Quota(150, "month"))
    decisions = await admit_many(gate, other, 100, 1, prefix="b")
    assert sum(decision.allowed for decision in decisions) == 50  # the user's month: 100 + 50


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


async def test_a_request_counts_until_its_bucket_leaves_the_window(
    gate: Admission, clock: Clock
) -> None:
    """Buckets of a second; a request counts until 61 buckets after its own began."""
    caller = principal(token=RateLimits(requests_per_minute=2))
    clock.advance(400)
    assert (await gate.admit(caller, "r-0", 0)).allowed  # bucket 0, leaves at 61 s
    clock.advance(20_000)
    assert (await gate.admit(caller, "r-1", 0)).allowed  # bucket 20, leaves at 81 s
    clock.ms = HOUR_BEFORE_MIDNIGHT + 40_000
    refused = await gate.admit(caller, "r-2", 0)
    assert (refused.retry_after_s, refused.headers["Retry-After"]) == (21.0, "21")
    assert refused.message.endswith("(limit 2). Retry in 21 s.")
    assert refused.headers["x-ratelimit-reset-requests"] == "41s"  # until r-1 leaves too
    clock.ms = HOUR_BEFORE_MIDNIGHT + 60_999
    last = await gate.admit(caller, "r-3", 0)
    assert (last.allowed, last.retry_after_s, last.headers["Retry-After"]) == (False, 0.001, "1")
    clock.advance(1)
    admitted = await gate.admit(caller, "r-4", 0)
    assert admitted.allowed
    assert admitted.headers["x-ratelimit-remaining-requests"] == "0"


async def test_tokens_wait_for_enough_of_the_oldest_to_leave(
    gate: Admission, clock: Clock
) -> None:
    caller = principal(token=RateLimits(tokens_per_minute=100))
    assert (await gate.admit(caller, "r-0", 60)).allowed
    clock.advance(10_000)
    assert (await gate.admit(caller, "r-1", 30)).allowed
    clock.advance(10_000)
    small = await gate.admit(caller, "r-2", 20)  # 110 > 100: r-0 must leave (at 61 s)
    assert (small.retry_after_s, small.code) == (41.0, "rate_limit_exceeded")
    assert small.message == (
        "Rate limit reached for tokens per minute on token tok-a (limit 100, used 90, "
        "requested 20). Retry in 41 s."
    )
    large = await gate.admit(caller, "r-3", 80)  # 170 > 100: r-0 and r-1 must leave
    assert large.retry_after_s == 51.0
    assert small.headers["x-ratelimit-remaining-tokens"] == "10"
    assert small.headers["x-ratelimit-reset-tokens"] == "51s"


async def test_settling_below_the_estimate_frees_tokens_per_minute(gate: Admission) -> None:
    caller = principal(token=RateLimits(tokens_per_minute=100))
    first = held(await gate.admit(caller, "r-1", 60))
    refused = await gate.admit(caller, "r-2", 60)
    assert not refused.allowed
    assert refused.headers["x-ratelimit-remaining-tokens"] == "40"
    await gate.settle(first, 10)
    admitted = await gate.admit(caller, "r-3", 60)
    assert admitted.headers["x-ratelimit-remaining-tokens"] == "30"
    await gate.settle(held(admitted), 90)  # more than estimated: charged in full
    assert not (await gate.admit(caller, "r-4", 1)).allowed


async def test_a_settlement_corrects_the_bucket_of_its_reservation(
    gate: Admission, clock: Clock
) -> None:
    """Once a reservation's bucket has left the window, settling it changes nothing there."""
    caller = principal(token=RateLimits(tokens_per_minute=100))
    early = held(await gate.admit(caller, "r-0", 60))
    clock.advance(61_000)
    assert (await gate.admit(caller, "r-1", 90)).allowed
    await gate.settle(early, 0)  # not a refund of 60 for the current window
    refused = await gate.admit(caller, "r-2", 20)
    assert refused.headers["x-ratelimit-remaining-tokens"] == "10"


async def test_a_request_above_the_tokens_per_minute_never_passes(gate: Admission) -> None:
    decision = await gate.admit(principal(token=RateLimits(tokens_per_minute=100)), "r-1", 150)
    assert decision == Decision(
        False, "rate_limit_exceeded",
        "Request too large for tokens per minute on token tok-a: it may use up to 150 tokens, "
        "the limit is 100.", None,
        {"x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "100",
         "x-ratelimit-reset-tokens": "0s"},
    )


async def test_a_limit_of_zero_never_passes(gate: Admission) -> None:
    decision = await gate.admit(principal(user=RateLimits(requests_per_minute=0)), "r-1", 1)
    assert (decision.allowed, decision.retry_after_s) == (False, None)
    assert "Retry-After" not in decision.headers


async def test_quota_reserves_settles_and_runs_out(gate: Admission) -> None:
    caller = principal(token_quota=Quota(100, "day"))
    first = held(await gate.admit(caller, "r-1", 70))
    refused = await gate.admit(caller, "r-2", 40)
    assert refused == Decision(
        False, "insufficient_quota",
        "Quota exhausted for this day on token tok-a: 70 of 100 tokens used, this request may "
        "use up to 40. Retry in 60 min.", 3600.0, {"Retry-After": "3600"},
    )
    await gate.settle(first, 20)  # the client went away: charged what it got
    second = held(await gate.admit(caller, "r-2", 40))  # 60 used
    assert not (await gate.admit(caller, "r-3", 50)).allowed
    await gate.settle(second, 80)  # 100 used
    assert (await gate.admit(caller, "r-4", 0)).allowed
    assert not (await gate.admit(caller, "r-5", 1)).allowed


async def test_quota_refuses_a_request_larger_than_the_whole_budget(gate: Admission) -> None:
    decision = await gate.admit(principal(user_quota=Quota(100, "month")), "r-1", 101)
    assert decision == Decision(
        False, "insufficient_quota",
        "Request too large for the quota of user bob: it may use up to 101 tokens, the quota "
        "is 100 per month.", None, {},
    )


async def test_a_refund_lands_in_the_period_of_its_reservation(
    gate: Admission, clock: Clock
) -> None:
    """Reserved at 23:59, settled at 00:01: the refund goes to 23:00's hour, not 00:00's."""
    caller = principal(token_quota=Quota(100, "hour"))
    clock.ms = MINUTE_BEFORE_MIDNIGHT
    late = held(await gate.admit(caller, "r-1", 70))
    clock.advance(120_000)
    assert (await gate.admit(caller, "r-2", 60)).allowed  # the new hour: 60 of 100
    await gate.settle(late, 10)  # r-1 used 10 of its 70
    refused = await gate.admit(caller, "r-3", 50)
    assert refused.message.startswith("Quota exhausted for this hour on token tok-a: 60 of 100")
    clock.ms = MINUTE_BEFORE_MIDNIGHT + 30_000  # look back at the old hour: 10 used
    assert (await gate.admit(caller, "r-4", 90)).allowed


async def test_an_excess_is_paid_by_the_period_of_its_reservation(
    gate: Admission, clock: Clock
) -> None:
    caller = principal(user_quota=Quota(100, "day"))
    clock.ms = MINUTE_BEFORE_MIDNIGHT
    late = held(await gate.admit(caller, "r-1", 10))
    clock.advance(120_000)
    await gate.settle(late, 95)  # used more than reserved, after midnight
    assert (await gate.admit(caller, "r-2", 100)).allowed  # the new day is untouched
    clock.ms = MINUTE_BEFORE_MIDNIGHT
    refused = await gate.admit(caller, "r-3", 10)
    assert "95 of 100 tokens used" in refused.message


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
    assert admitted.headers["x-ratelimit-remaining-requests"] == "8"
    assert admitted.headers["x-ratelimit-remaining-tokens"] == "900"


async def test_the_longest_wait_decides_and_a_quota_speaks_first(
    gate: Admission, clock: Clock
) -> None:
    caller = principal(token=RateLimits(requests_per_minute=1), token_quota=Quota(10, "hour"))
    clock.ms = MINUTE_BEFORE_MIDNIGHT + 30_000  # the hour ends in 30 s, the request leaves in 61
    assert (await gate.admit(caller, "r-1", 10)).allowed
    refused = await gate.admit(caller, "r-2", 1)
    assert refused.code == "insufficient_quota"
    assert (refused.retry_after_s, refused.headers["Retry-After"]) == (61.0, "61")


async def test_headers_are_openais(gate: Admission) -> None:
    caller = principal(
        token=RateLimits(requests_per_minute=3, tokens_per_minute=1000),
        user=RateLimits(requests_per_minute=50, tokens_per_minute=300),
    )
    decision = await gate.admit(caller, "r-1", 100)
    assert decision.headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "1m1s",
        "x-ratelimit-limit-tokens": "300",
        "x-ratelimit-remaining-tokens": "200",
        "x-ratelimit-reset-tokens": "1m1s",
    }
    await admit_many(gate, caller, 2, 100, prefix="more")
    refused = await gate.admit(caller, "r-4", 100)
    assert refused.headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m1s",
        "x-ratelimit-limit-tokens": "300",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "1m1s",
        "Retry-After": "61",
    }


async def test_no_rules_admits_freely(gate: Admission) -> None:
    decision = await gate.admit(principal(), "r-1", 10**6)
    assert (decision.allowed, decision.headers) == (True, {})
    await gate.settle(held(decision), 5)


async def test_a_reservation_never_settled_is_returned_when_its_hold_ends(
    gate: Admission, clock: Clock
) -> None:
    """Its gateway died: the estimate comes off the quota and the window once the hold ends."""
    caller = principal(token=RateLimits(tokens_per_minute=100), token_quota=Quota(100, "day"))
    held(await gate.admit(caller, "r-1", 60, hold_s=10))
    clock.advance(9_999)
    assert await gate.expire() == 0
    assert not (await gate.admit(caller, "r-2", 50)).allowed
    clock.advance(1)
    assert await gate.expire() == 1
    assert await gate.expire() == 0
    admitted = await gate.admit(caller, "r-3", 50)
    assert admitted.headers["x-ratelimit-remaining-tokens"] == "50"
    refused = await gate.admit(caller, "r-4", 60)
    assert refused.code == "insufficient_quota"
    assert "50 of 100 tokens used" in refused.message


async def test_a_settlement_after_the_hold_charges_the_usage_alone(
    gate: Admission, clock: Clock
) -> None:
    caller = principal(token_quota=Quota(100, "day"))
    late = held(await gate.admit(caller, "r-1", 60, hold_s=10))
    clock.advance(10_000)
    assert await gate.expire() == 1
    await gate.settle(late, 30)  # its estimate was returned: the 30 used are charged
    await gate.settle(late, 30)  # and only once
    refused = await gate.admit(caller, "r-2", 80)
    assert "30 of 100 tokens used" in refused.message


async def test_a_settled_reservation_is_settled_once_and_never_returned(
    gate: Admission, clock: Clock
) -> None:
    caller = principal(token_quota=Quota(100, "day"))
    first = held(await gate.admit(caller, "r-1", 60, hold_s=10))
    second = held(await gate.admit(caller, "r-2", 20, hold_s=10))
    await gate.settle(first, 60)  # used all it reserved
    await gate.settle(second, 5)
    await gate.settle(second, 5)  # a settlement sent again
    clock.advance(20_000)
    assert await gate.expire() == 0
    refused = await gate.admit(caller, "r-3", 40)
    assert "65 of 100 tokens used" in refused.message


async def test_admitting_a_held_request_again_reserves_nothing_more(gate: Admission) -> None:
    """An admission sent again (its answer was lost with a connection) is the same admission."""
    caller = principal(token_quota=Quota(100, "day"))
    first = held(await gate.admit(caller, "r-1", 60, hold_s=10))
    again = held(await gate.admit(caller, "r-1", 60, hold_s=10))
    assert again == first
    refused = await gate.admit(caller, "r-2", 50)
    assert "60 of 100 tokens used" in refused.message


@pytest.mark.parametrize(("request_id", "tokens"), [("", 1), ("r-1", -1)])
async def test_bad_arguments_are_refused(gate: Admission, request_id: str, tokens: int) -> None:
    with pytest.raises(ValueError, match="must not be"):
        await gate.admit(principal(), request_id, tokens)


async def test_failed_authentications_wait_for_the_oldest_to_age_out(
    gate: Admission, clock: Clock
) -> None:
    """Three failures a minute (this suite's setting); the fourth attempt waits."""
    for _ in range(3):
        assert await gate.auth_wait("192.0.2.1") == 0
        await gate.auth_failed("192.0.2.1")
        clock.advance(1_000)
    assert await gate.auth_wait("192.0.2.1") == 58.0  # the first failure leaves at 61 s
    assert await gate.auth_wait("192.0.2.2") == 0
    clock.advance(57_999)
    assert await gate.auth_wait("192.0.2.1") == 0.001
    clock.advance(1)
    assert await gate.auth_wait("192.0.2.1") == 0
    await gate.auth_failed("192.0.2.1")  # three again: the second failure leaves at 62 s
    assert await gate.auth_wait("192.0.2.1") == 1.0


@pytest.mark.redis
async def test_memory_and_redis_agree_on_a_random_history(
    request: pytest.FixtureRequest, clock: Clock
) -> None:
    """A seeded random run of admissions (held or not), settlements (some sent twice), expiries
    and clock moves across a midnight, fed to both implementations at once: every answer
    equal."""
    clock.ms = MINUTE_BEFORE_MIDNIGHT
    memory, shared = make("memory", clock, request), make("redis", clock, request)
    await shared.start()
    rng = random.Random(13)
    callers = [
        principal("tok-a", token=RateLimits(requests_per_minute=7, tokens_per_minute=400),
                  user_quota=Quota(3000, "hour")),
        principal("tok-b", user=RateLimits(tokens_per_minute=500),
                  token_quota=Quota(900, "day")),
        principal("tok-c", token=RateLimits(requests_per_minute=4)),
    ]
    open_reservations: list[Reservation] = []
    for step in range(400):
        roll = rng.random()
        if roll < 0.55:
            caller = rng.choice(callers)
            estimate = rng.choice([0, 1, 20, 90, 150, 450])
            hold_s = rng.choice([None, 5.0, 30.0])
            answers = [await gate.admit(caller, f"r-{step}", estimate, hold_s=hold_s)
                       for gate in (memory, shared)]
            assert answers[0] == answers[1], (step, answers)
            if answers[0].reservation is not None:
                open_reservations.append(answers[0].reservation)
        elif roll < 0.8 and open_reservations:
            reservation = open_reservations.pop(rng.randrange(len(open_reservations)))
            used = rng.choice([0, reservation.tokens // 2, reservation.tokens + 30])
            for _ in range(rng.choice([1, 1, 2])):  # sometimes sent twice
                for gate in (memory, shared):
                    await gate.settle(reservation, used)
        elif roll < 0.85:
            assert await memory.expire() == await shared.expire(), step
        else:
            clock.advance(rng.choice([300, 1_000, 7_000, 29_000]))
    await shared.close()
