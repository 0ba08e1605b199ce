"""The rules of admission, stated once.

Every implementation runs these steps: ``MemoryAdmission`` calls these functions on its
dictionaries; in Redis the Lua scripts do only what must happen in one atomic step (tally the
windows, the admission predicate, the reservation) with the constants passed from here, and
every figure a caller sees (waits, headers, messages) is computed here from what the script
read. One conformance suite (``tests/gateway/test_admission_conformance.py``) runs against both.

**Windows** (requests and tokens per minute, per token and per user; failed authentications per
client address). Time is cut into buckets of ``BUCKET_MS``; a window holds, per bucket, the
requests admitted in it and their tokens. The window at ``now`` is the bucket of ``now`` and the
``SPAN - 1`` before it, so a request counts for 60 to 61 s after its admission and a limit is never
exceeded in any 60 s. A window never holds more than ``SPAN`` buckets: the buckets that left it
are deleted whenever it is read, so checking a window costs the same however many requests it
counts.

- requests per minute (RPM) admit while ``requests < limit``;
- tokens per minute (TPM) admit while ``tokens + estimate <= limit``; the estimate is logged in
  the bucket of the admission, and ``settle`` replaces it there with the usage (once that bucket
  has left the window there is nothing left to correct).

**Streams**: an API token holds at most a cap of open streams, counted across every gateway.
Each open stream holds a lease that ends at its request's deadline and a margin: a stream whose
gateway died stops counting when its lease ends, without anyone closing it.

**Quotas**: a counter of tokens per subject and calendar period (hour, day, month; UTC), which
admits while ``used + estimate <= budget``. A reservation is charged to the period of its
admission, and settled there: a request that spans a period boundary refunds (or pays its excess
to) the period it was admitted in, never the next one.

**Admission**: every rule that applies, checked at once; admitted when all pass, and only then is
anything reserved (a refusal reserves nothing). A principal with no rule is admitted without
touching any store.

**Held reservations** (``admit(..., hold_s=...)``, what the gateway does): the reservation is
recorded under its request id until it is settled or its hold ends (``holds`` tells when there is
something to record: tokens reserved where a settlement corrects them). Its request's gateway
may die before settling it: once the hold is over, ``expire`` returns the estimate to the window
bucket and the quota periods it was charged to, as a settlement with no usage would. A
settlement after that charges the usage alone; a settlement sent twice, or an admission sent
twice under one request id (its answer lost with a connection), counts once. What a record says
(``settled``, ``expired``) is kept ``SETTLED_KEEP_MS`` after its end.

**Failed authentications**: a window per client address counts them; once it holds
``per_minute``, the address's further attempts wait until enough of them have left it.

**Waits**: a refusal's retry delay is the longest wait of the failing rules: for a window, until
enough of its oldest buckets have left it (a bucket leaves ``SPAN`` buckets after its own start);
for a quota, until its period ends. A rule no wait can satisfy (an estimate above a TPM limit or
a whole quota, a limit of 0) is ``NEVER``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from uplion.accounts.principal import Period, Principal

BUCKET_MS = 1_000
SPAN = 61  # buckets in a window: the current one and the 60 before it
KEY_SLACK_MS = 1_000  # a window's storage outlives its newest bucket by this much
QUOTA_GRACE_S = 86_400  # a quota counter outlives its period by this much
NEVER = -1  # a wait no amount of waiting ends
SETTLED_KEEP_MS = 60_000  # how long the end of a held reservation is remembered


@dataclass(frozen=True, slots=True)
class Window:
    """One subject's per-minute limits (``None``: unlimited)."""

    subject: str  # in messages: "token abc", "user bob"
    key: str  # "uplion:rl:t:<token id>"
    requests: int | None
    tokens: int | None


@dataclass(frozen=True, slots=True)
class Quota:
    """One subject's budget of tokens per period."""

    subject: str
    key: str  # the counter's prefix: "uplion:quota:t:<token id>:", the period's label follows
    tokens: int
    period: Period


@dataclass(frozen=True, slots=True)
class Rules:
    windows: tuple[Window, ...]
    quotas: tuple[Quota, ...]

    @property
    def settled_windows(self) -> tuple[Window, ...]:
        """The windows ``settle`` corrects: those counting tokens."""
        return tuple(window for window in self.windows if window.tokens is not None)


def rules_of(principal: Principal) -> Rules:
    """The windows and quotas that apply to a principal (its token's and its user's)."""
    windows: list[Window] = []
    quotas: list[Quota] = []
    subjects = (
        ("t", principal.token_id, f"token {principal.token_id}",
         principal.token_limits, principal.token_quota),
        ("u", principal.user_id, f"user {principal.user_name}",
         principal.user_limits, principal.user_quota),
    )
    for kind, key, subject, limits, quota in subjects:
        if limits.requests_per_minute is not None or limits.tokens_per_minute is not None:
            windows.append(Window(subject, f"uplion:rl:{kind}:{key}",
                                  limits.requests_per_minute, limits.tokens_per_minute))
        if quota is not None:
            quotas.append(Quota(subject, f"uplion:quota:{kind}:{key}:", quota.tokens,
                                quota.period))
    return Rules(tuple(windows), tuple(quotas))


def holds(rules: Rules, estimate: int, hold_s: float | None) -> bool:
    """Whether an admission with a hold records its reservation: it reserves tokens in a window
    that counts them or against a quota."""
    return (hold_s is not None and estimate > 0
            and bool(rules.settled_windows or rules.quotas))


def streams_key(token_id: str) -> str:
    """The open streams of an API token (**Streams**: each with the end of its lease)."""
    return f"uplion:streams:{token_id}"


def failures_key(address: str) -> str:
    """The window of a client address's failed authentications."""
    return f"uplion:authfail:{address}"


def bucket_of(ms: int) -> int:
    return ms // BUCKET_MS


def oldest_live(now_ms: int) -> int:
    """The oldest bucket still in the window at ``now_ms``; older ones have left it."""
    return bucket_of(now_ms) - SPAN + 1


def leaves_ms(bucket: int) -> int:
    """When a bucket leaves the window (ms)."""
    return (bucket + SPAN) * BUCKET_MS


@dataclass(frozen=True, slots=True)
class Tally:
    """A window's live buckets, oldest first: ``(bucket, requests, tokens)``."""

    buckets: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def of(cls, buckets: Mapping[int, Sequence[int]], now_ms: int) -> Tally:
        """The live part of ``bucket -> (requests, tokens)``."""
        oldest = oldest_live(now_ms)
        return cls(tuple((bucket, counts[0], counts[1])
                         for bucket, counts in sorted(buckets.items()) if bucket >= oldest))

    @classmethod
    def from_flat(cls, flat: Sequence[int]) -> Tally:
        """From ``[bucket, requests, tokens, bucket, ...]``, oldest first (the scripts' form)."""
        return cls(tuple((int(flat[i]), int(flat[i + 1]), int(flat[i + 2]))
                         for i in range(0, len(flat), 3)))

    @property
    def requests(self) -> int:
        return sum(requests for _bucket, requests, _tokens in self.buckets)

    @property
    def tokens(self) -> int:
        return sum(tokens for _bucket, _requests, tokens in self.buckets)

    def reset_ms(self, now_ms: int, *, tokens: bool = False) -> int:
        """Until the window holds no requests (no tokens, if ``tokens``) any more."""
        held = [bucket for bucket, requests, amount in self.buckets
                if (amount if tokens else requests)]
        return leaves_ms(held[-1]) - now_ms if held else 0

    def plus(self, bucket: int, requests: int, tokens: int) -> Tally:
        """This tally with one more admission in ``bucket`` (the newest)."""
        if self.buckets and self.buckets[-1][0] == bucket:
            _bucket, had_requests, had_tokens = self.buckets[-1]
            last = (bucket, had_requests + requests, had_tokens + tokens)
            return Tally((*self.buckets[:-1], last))
        return Tally((*self.buckets, (bucket, requests, tokens)))

    def _wait(self, amounts: Iterable[int], excess: int, now_ms: int) -> int:
        """Until the oldest buckets holding at least ``excess`` have left the window."""
        freed = 0
        for (bucket, _requests, _tokens), amount in zip(self.buckets, amounts, strict=True):
            freed += amount
            if freed >= excess:
                return leaves_ms(bucket) - now_ms
        return leaves_ms(self.buckets[-1][0]) - now_ms if self.buckets else 0

    def requests_wait(self, limit: int, now_ms: int) -> int:
        """Until one more request fits under ``limit`` (0: it fits now)."""
        if self.requests < limit:
            return 0
        if limit == 0:
            return NEVER
        return self._wait((r for _b, r, _t in self.buckets), self.requests - limit + 1, now_ms)

    def tokens_wait(self, limit: int, estimate: int, now_ms: int) -> int:
        """Until ``estimate`` more tokens fit under ``limit`` (0: they fit now)."""
        if estimate > limit:
            return NEVER
        excess = self.tokens + estimate - limit
        if excess <= 0:
            return 0
        return self._wait((t for _b, _r, t in self.buckets), excess, now_ms)


def window_waits(window: Window, tally: Tally, estimate: int, now_ms: int) -> tuple[int, int]:
    """The waits (ms; 0: passes) of a window's request limit and token limit."""
    requests = 0 if window.requests is None else tally.requests_wait(window.requests, now_ms)
    tokens = 0 if window.tokens is None else tally.tokens_wait(window.tokens, estimate, now_ms)
    return requests, tokens


def quota_wait(quota: Quota, used: int, estimate: int, now_ms: int) -> int:
    """The wait (ms; 0: passes) of a quota with ``used`` tokens spent in the current period."""
    if estimate > quota.tokens:
        return NEVER
    if used + estimate > quota.tokens:
        return period(now_ms // 1000, quota.period)[1] * 1000 - now_ms
    return 0


def failures_wait(tally: Tally, per_minute: int, now_ms: int) -> int:
    """How long an address with these failed authentications waits before its next attempt
    (0: it may try now): as long as ``per_minute`` failures are in its window."""
    return tally.requests_wait(per_minute, now_ms)


def admits(rules: Rules, tallies: Sequence[Tally], used: Sequence[int], estimate: int) -> bool:
    """The admission predicate (what ``admit.lua`` computes in Redis)."""
    windows_pass = all(
        (window.requests is None or tally.requests < window.requests)
        and (window.tokens is None or tally.tokens + estimate <= window.tokens)
        for window, tally in zip(rules.windows, tallies, strict=True)
    )
    return windows_pass and all(spent + estimate <= quota.tokens
                                for quota, spent in zip(rules.quotas, used, strict=True))


def period(seconds: int, name: Period) -> tuple[str, int]:
    """The label of the UTC period holding ``seconds`` and its end (epoch seconds).

    ``calendar.lua`` computes the same in Redis (a test holds them equal).
    """
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    if name == "hour":
        start = moment.replace(minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%dT%H"), int((start + datetime.timedelta(hours=1)).timestamp())
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if name == "day":
        return start.strftime("%Y-%m-%d"), int((start + datetime.timedelta(days=1)).timestamp())
    start = start.replace(day=1)
    end = (start + datetime.timedelta(days=32)).replace(day=1)
    return start.strftime("%Y-%m"), int(end.timestamp())


def counter_key(quota: Quota, at_ms: int) -> str:
    """The key of a quota's counter for the period holding ``at_ms``."""
    return quota.key + period(at_ms // 1000, quota.period)[0]
