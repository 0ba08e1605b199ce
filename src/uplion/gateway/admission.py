"""Admission: admit or refuse a request for a principal (rate limits, quotas), then settle it.

Rules. A request is checked against every rule that applies to its principal, all at once: the
token's and the user's requests per minute (RPM) and tokens per minute (TPM), and the token's and
the user's token quota per calendar period (hour, day or month, UTC). ``None`` is unlimited; a
principal with no rule at all is admitted without touching any store.

Windows (RPM, TPM): a sliding-window log per subject (token or user). Each admitted request is
logged with its admission time (milliseconds) and, when a TPM limit applies, its tokens (the
estimate until ``settle`` replaces it with the actual usage). The window is the last 60 s: a
request admitted at ``t`` counts until ``t + 60 s``. RPM admits when fewer than the limit are
logged, TPM when the tokens logged plus this request's estimate fit the limit. Nothing is
approximated (no buckets, no interpolation between fixed windows), so a limit of 100 admits
exactly 100 requests in any 60 s, however many gateways ask at once.

Quotas: a counter of tokens per subject and period. Admission reserves the estimate (prompt +
``max_tokens``) if ``used + estimate <= budget``; ``settle`` adds ``used - reserved``. A request
that spans a period boundary is settled in the period it ends in: its reservation stays charged to
the period it began in, and a refund never takes the new period's counter below zero.

Refusals: ``insufficient_quota`` when a quota refuses, else ``rate_limit_exceeded``. The retry
delay is when every failing check would pass (the oldest entries leave the window, the period
ends); a request that can never pass (an estimate above a TPM limit or a whole quota, a limit of
0) gets no retry delay. A refused request reserves nothing anywhere.

Redis (``RedisAdmission``, any number of gateways). Keys, per subject ``t:<token id>`` or
``u:<user id>``:

- ``uplion:rl:<subject>:req``: the log, a ZSET (member: request id, score: admission time in ms);
  ``uplion:rl:<subject>:tok``: a HASH of request id -> tokens, and the field ``""`` (no request
  id is empty) holding their sum. Both expire 61 s after the last admission.
- ``uplion:quota:<subject>:<period start>``: the counter (period start ``2025-06``,
  ``2025-06-01`` or ``2025-06-01T13``), expiring a day after the period ends. The period start
  comes from the server's clock, so the script appends it to a prefix passed in ``KEYS``: fine on
  one Redis (replicated or not), not on Redis Cluster.

Why it is exact: one admission is one Lua script (EVALSHA, reloaded on NOSCRIPT), and Redis runs a
script alone, so pruning, every check and every reservation happen as one step with no other
admission in between. Time is the server's (``TIME``), so the gateways' clocks do not matter. No
command is retried by the client: a script that ran but whose reply was lost (a dropped
connection, a timeout) would reserve twice; a lost connection costs one refused request
(``AdmissionUnavailable``, answered 503, which OpenAI's clients retry). Settling is a second
script: it replaces a logged estimate with the usage, and adjusts the current period's counter.

Memory (``MemoryAdmission``, one process): the same rules and the same figures, on dictionaries;
a check and its reservation run with no ``await`` in between, so they are atomic in the event loop.
"""

from __future__ import annotations

import abc
import collections
import datetime
import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from uplion.accounts.principal import Period, Principal

logger = logging.getLogger(__name__)

_WINDOW_MS = 60_000
_KEY_SLACK_MS = 1_000  # window keys outlive their newest entry by this much
_QUOTA_GRACE_S = 86_400  # quota counters outlive their period by this much
_NEVER = -1  # a wait that no amount of waiting ends
_POOL_SIZE = 64

# period(seconds, name) -> label of the period holding that UTC time, its end (epoch seconds).
# Howard Hinnant's days <-> civil date conversions (proleptic Gregorian).
_CALENDAR = """
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function period(seconds, name)
  local days = math.floor(seconds / 86400)
  local y, m, d = civil_from_days(days)
  if name == 'hour' then
    local hour = math.floor((seconds - days * 86400) / 3600)
    return string.format('%04d-%02d-%02dT%02d', y, m, d, hour), days * 86400 + (hour + 1) * 3600
  elseif name == 'day' then
    return string.format('%04d-%02d-%02d', y, m, d), (days + 1) * 86400
  end
  local label = string.format('%04d-%02d', y, m)
  if m == 12 then y, m = y + 1, 1 else m = m + 1 end
  return label, days_from_civil(y, m, 1) * 86400
end
local function now_ms()
  local clock = redis.call('TIME')
  return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end
"""

# KEYS: per window its log and its tokens, then per quota the prefix of its counter.
# ARGV: request id, estimate, number of windows, per window its RPM and TPM (-1: unlimited),
# per quota its budget and period. Returns {admitted (0/1), per window: requests, tokens,
# reset ms, requests wait ms, tokens wait ms; per quota: used, wait ms} (wait 0: passed, -1: never).
_ADMIT = _CALENDAR + (
    f"local WINDOW_MS, SLACK_MS, GRACE_S = {_WINDOW_MS}, {_KEY_SLACK_MS}, {_QUOTA_GRACE_S}\n"
) + """
local function prune(log, amounts, cutoff)
  while true do
    local gone = redis.call('ZRANGE', log, '-inf', cutoff, 'BYSCORE', 'LIMIT', 0, 1000)
    if #gone == 0 then return end
    local freed = 0
    for _, amount in ipairs(redis.call('HMGET', amounts, unpack(gone))) do
      if amount then freed = freed + tonumber(amount) end
    end
    redis.call('HDEL', amounts, unpack(gone))
    if freed ~= 0 then redis.call('HINCRBY', amounts, '', -freed) end
    redis.call('ZREM', log, unpack(gone))
  end
end
local function requests_wait(log, count, limit, now)
  if limit == 0 then return -1 end
  local entry = redis.call('ZRANGE', log, count - limit, count - limit, 'WITHSCORES')
  return tonumber(entry[2]) + WINDOW_MS - now
end
local function tokens_wait(log, amounts, excess, now)
  local freed, start = 0, 0
  while true do
    local entries = redis.call('ZRANGE', log, start, start + 99, 'WITHSCORES')
    if #entries == 0 then return WINDOW_MS end
    local ids = {}
    for j = 1, #entries, 2 do ids[#ids + 1] = entries[j] end
    local values = redis.call('HMGET', amounts, unpack(ids))
    for j = 1, #ids do
      freed = freed + tonumber(values[j] or 0)
      if freed >= excess then return tonumber(entries[2 * j]) + WINDOW_MS - now end
    end
    start = start + 100
  end
end

local id, estimate, windows = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local admitted = 1
local seen, spent = {}, {}
for i = 1, windows do
  local log, amounts = KEYS[2 * i - 1], KEYS[2 * i]
  local rpm, tpm = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  prune(log, amounts, now - WINDOW_MS)
  local count, total = redis.call('ZCARD', log), 0
  local request_wait, token_wait = 0, 0
  if rpm >= 0 and count >= rpm then request_wait = requests_wait(log, count, rpm, now) end
  if tpm >= 0 then
    total = tonumber(redis.call('HGET', amounts, '') or 0)
    if estimate > tpm then
      token_wait = -1
    elseif total + estimate > tpm then
      token_wait = tokens_wait(log, amounts, total + estimate - tpm, now)
    end
  end
  if request_wait ~= 0 or token_wait ~= 0 then admitted = 0 end
  seen[i] = {count, total, request_wait, token_wait}
end
for j = 1, #KEYS - 2 * windows do
  local at = 3 + 2 * windows + 2 * j
  local budget = tonumber(ARGV[at - 1])
  local label, finish = period(math.floor(now / 1000), ARGV[at])
  local key = KEYS[2 * windows + j] .. label
  local used, wait = tonumber(redis.call('GET', key) or 0), 0
  if estimate > budget then
    wait = -1
  elseif used + estimate > budget then
    wait = finish * 1000 - now
  end
  if wait ~= 0 then admitted = 0 end
  spent[j] = {key, finish, used, wait}
end
if admitted == 1 then
  for i = 1, windows do
    local log, amounts = KEYS[2 * i - 1], KEYS[2 * i]
    redis.call('ZADD', log, now, id)
    redis.call('PEXPIRE', log, WINDOW_MS + SLACK_MS)
    seen[i][1] = seen[i][1] + 1
    if tonumber(ARGV[3 + 2 * i]) >= 0 then
      redis.call('HSET', amounts, id, estimate)
      redis.call('HINCRBY', amounts, '', estimate)
      redis.call('PEXPIRE', amounts, WINDOW_MS + SLACK_MS)
      seen[i][2] = seen[i][2] + estimate
    end
  end
  for j = 1, #spent do
    redis.call('INCRBY', spent[j][1], estimate)
    redis.call('EXPIREAT', spent[j][1], spent[j][2] + GRACE_S)
    spent[j][3] = spent[j][3] + estimate
  end
end
local reply = {admitted}
for i = 1, windows do
  local newest = redis.call('ZRANGE', KEYS[2 * i - 1], -1, -1, 'WITHSCORES')
  local reset = #newest > 0 and tonumber(newest[2]) + WINDOW_MS - now or 0
  for _, value in ipairs({seen[i][1], seen[i][2], reset, seen[i][3], seen[i][4]}) do
    reply[#reply + 1] = value
  end
end
for j = 1, #spent do
  reply[#reply + 1] = spent[j][3]
  reply[#reply + 1] = spent[j][4]
end
return reply
"""

# KEYS: the token HASH of each window with a TPM limit, then the prefix of each quota's counter.
# ARGV: request id, used, reserved, number of HASHes, then each quota's period.
_SETTLE = _CALENDAR + f"local GRACE_S = {_QUOTA_GRACE_S}\n" + """
local id, used, reserved, hashes = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 1, hashes do
  local logged = redis.call('HGET', KEYS[i], id)
  if logged then
    redis.call('HSET', KEYS[i], id, used)
    redis.call('HINCRBY', KEYS[i], '', used - tonumber(logged))
  end
end
local seconds = math.floor(now_ms() / 1000)
for j = hashes + 1, #KEYS do
  local label, finish = period(seconds, ARGV[4 + j - hashes])
  local key = KEYS[j] .. label
  local value = math.max(0, tonumber(redis.call('GET', key) or 0) + used - reserved)
  redis.call('SET', key, value, 'EXAT', finish + GRACE_S)
end
return 0
"""


class AdmissionUnavailable(Exception):
    """The store of counters did not answer: nothing can be decided (the gateway answers 503)."""


@dataclass(frozen=True)
class Decision:
    """An admission's answer.

    ``headers``: OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the
    tightest applicable limit of each kind (remaining counts this request when admitted; reset is
    when the window is empty again), and ``Retry-After`` (whole seconds) when refused.
    """

    allowed: bool
    code: str | None  # "rate_limit_exceeded" | "insufficient_quota" | None
    message: str
    retry_after_s: float | None
    headers: dict[str, str]


class Admission(abc.ABC):
    """Admits or refuses requests against a principal's rate limits and quotas; see the module."""

    async def start(self) -> None:  # noqa: B027  # nothing to open unless overridden
        """Open what the admission needs."""

    async def close(self) -> None:  # noqa: B027  # nothing to close unless overridden
        """Release it."""

    @abc.abstractmethod
    async def admit(self, principal: Principal, request_id: str, estimated_tokens: int) -> Decision:
        """Check every rule at once; when all pass, log the request and reserve its estimate.

        ``request_id`` is unique per request; ``estimated_tokens`` is the most it may use
        (prompt estimate + ``max_tokens``), 0 when unknown.
        """

    @abc.abstractmethod
    async def settle(
        self, principal: Principal, request_id: str, reserved_tokens: int, used_tokens: int
    ) -> None:
        """Replace an admitted request's reservation with what it used; once per request.

        Never raises for the store: a failure is logged, and the reservation stays charged.
        """


@dataclass(frozen=True, slots=True)
class _Window:
    """One subject's per-minute limits."""

    subject: str  # in messages: "token abc", "user bob"
    prefix: str  # "uplion:rl:t:<id>:"
    requests: int | None
    tokens: int | None


@dataclass(frozen=True, slots=True)
class _Quota:
    """One subject's budget of tokens per period."""

    subject: str
    prefix: str  # "uplion:quota:t:<id>:"
    tokens: int
    period: Period


@dataclass(frozen=True, slots=True)
class _Rules:
    windows: tuple[_Window, ...]
    quotas: tuple[_Quota, ...]

    @property
    def settled(self) -> tuple[tuple[_Window, ...], tuple[_Quota, ...]]:
        """What ``settle`` adjusts: the windows counting tokens, and the quotas."""
        return tuple(window for window in self.windows if window.tokens is not None), self.quotas


def needs_settlement(principal: Principal) -> bool:
    """Whether ``settle`` has anything to adjust for this principal (token windows or quotas)."""
    windows, quotas = _rules(principal).settled
    return bool(windows or quotas)


def _rules(principal: Principal) -> _Rules:
    windows: list[_Window] = []
    quotas: list[_Quota] = []
    subjects = (
        ("t", principal.token_id, f"token {principal.token_id}",
         principal.token_limits, principal.token_quota),
        ("u", principal.user_id, f"user {principal.user_name}",
         principal.user_limits, principal.user_quota),
    )
    for kind, key, subject, limits, quota in subjects:
        if limits.requests_per_minute is not None or limits.tokens_per_minute is not None:
            windows.append(_Window(subject, f"uplion:rl:{kind}:{key}:",
                                   limits.requests_per_minute, limits.tokens_per_minute))
        if quota is not None:
            quotas.append(_Quota(subject, f"uplion:quota:{kind}:{key}:", quota.tokens,
                                 quota.period))
    return _Rules(tuple(windows), tuple(quotas))


@dataclass(frozen=True, slots=True)
class _Seen:
    """A window after the check (this request included when admitted). Waits: 0 passed."""

    requests: int
    tokens: int
    reset_ms: int  # until the window is empty
    requests_wait_ms: int
    tokens_wait_ms: int


@dataclass(frozen=True, slots=True)
class _Spent:
    """A quota after the check."""

    used: int
    wait_ms: int


def _check_arguments(request_id: str, *tokens: int) -> None:
    if not request_id:
        raise ValueError("request_id must not be empty")
    if min(tokens) < 0:
        raise ValueError("token counts must not be negative")


def _admitted_freely() -> Decision:
    return Decision(True, None, "", None, {})


def _duration(ms: int) -> str:
    """OpenAI's (Go's) format: ``12ms``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    if ms < 1000:
        return f"{ms}ms" if ms > 0 else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    return f"{minutes}m{seconds}" if minutes else seconds


def _in_words(ms: int) -> str:
    """A wait in words for messages: ``12 s``, ``5 min``, ``3 h``, ``2 d`` (rounded up)."""
    seconds = math.ceil(ms / 1000)
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{math.ceil(seconds / size)} {unit}"
    return f"{seconds} s"


def _decide(rules: _Rules, estimate: int, admitted: bool, seen: Sequence[_Seen],
            spent: Sequence[_Spent]) -> Decision:
    headers: dict[str, str] = {}
    counted = [(window.requests, state.requests, state.reset_ms)
               for window, state in zip(rules.windows, seen, strict=True)
               if window.requests is not None]
    weighed = [(window.tokens, state.tokens, state.reset_ms if state.tokens else 0)
               for window, state in zip(rules.windows, seen, strict=True)
               if window.tokens is not None]
    for kind, figures in (("requests", counted), ("tokens", weighed)):
        if figures:
            limit, current, reset_ms = min(figures, key=lambda each: (each[0] - each[1], each[0]))
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - current))
            headers[f"x-ratelimit-reset-{kind}"] = _duration(reset_ms)
    if admitted:
        return Decision(True, None, "", None, headers)

    refusals: list[tuple[int, str, str]] = []  # (wait ms, code, message), in order of precedence
    for quota, counter in zip(rules.quotas, spent, strict=True):
        if counter.wait_ms == _NEVER:
            refusals.append((counter.wait_ms, "insufficient_quota",
                             f"Request too large for the quota of {quota.subject}: it may use up "
                             f"to {estimate} tokens, the quota is {quota.tokens} per "
                             f"{quota.period}."))
        elif counter.wait_ms:
            refusals.append((counter.wait_ms, "insufficient_quota",
                             f"Quota exhausted for this {quota.period} on {quota.subject}: "
                             f"{counter.used} of {quota.tokens} tokens used, this request may use "
                             f"up to {estimate}."))
    for window, state in zip(rules.windows, seen, strict=True):
        if state.requests_wait_ms:
            refusals.append((state.requests_wait_ms, "rate_limit_exceeded",
                             f"Rate limit reached for requests per minute on {window.subject} "
                             f"(limit {window.requests})."))
        if state.tokens_wait_ms == _NEVER:
            refusals.append((state.tokens_wait_ms, "rate_limit_exceeded",
                             f"Request too large for tokens per minute on {window.subject}: it "
                             f"may use up to {estimate} tokens, the limit is {window.tokens}."))
        elif state.tokens_wait_ms:
            refusals.append((state.tokens_wait_ms, "rate_limit_exceeded",
                             f"Rate limit reached for tokens per minute on {window.subject} "
                             f"(limit {window.tokens}, used {state.tokens}, requested "
                             f"{estimate})."))
    waits = [wait for wait, _code, _message in refusals]
    if _NEVER in waits:
        _wait, code, message = next(refusal for refusal in refusals if refusal[0] == _NEVER)
        return Decision(False, code, message, None, headers)
    wait_ms = max(waits)
    _wait, code, message = refusals[0]
    headers["Retry-After"] = str(max(1, math.ceil(wait_ms / 1000)))
    return Decision(False, code, f"{message} Retry in {_in_words(wait_ms)}.", wait_ms / 1000,
                    headers)


class RedisAdmission(Admission):
    """Limits and quotas shared by every gateway, in Redis; see the module docstring.

    ``admit`` raises ``AdmissionUnavailable`` when Redis is unreachable or fails (the gateway
    answers 503). ``timeout_s`` bounds connecting, each command, and waiting for one of the
    pool's connections.
    """

    def __init__(self, redis_url: str, *, timeout_s: float = 2.0) -> None:
        pool = BlockingConnectionPool.from_url(
            redis_url, max_connections=_POOL_SIZE, timeout=timeout_s,
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = Redis.from_pool(pool)
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)

    async def start(self) -> None:
        """Check that Redis answers and load the scripts (fail fast on a wrong URL)."""
        try:
            await self._redis.script_load(_ADMIT)
            await self._redis.script_load(_SETTLE)
        except RedisError as error:
            raise AdmissionUnavailable(f"Redis did not answer: {error}") from error

    async def close(self) -> None:
        await self._redis.aclose()

    async def admit(self, principal: Principal, request_id: str, estimated_tokens: int) -> Decision:
        """Check and reserve in one script call; raises ``AdmissionUnavailable`` without Redis."""
        _check_arguments(request_id, estimated_tokens)
        rules = _rules(principal)
        if not rules.windows and not rules.quotas:
            return _admitted_freely()
        keys: list[str] = []
        args: list[str | int] = [request_id, estimated_tokens, len(rules.windows)]
        for window in rules.windows:
            keys += [window.prefix + "req", window.prefix + "tok"]
            args += [_limit(window.requests), _limit(window.tokens)]
        for quota in rules.quotas:
            keys.append(quota.prefix)
            args += [quota.tokens, quota.period]
        try:
            reply = cast(list[int], await self._admit(keys=keys, args=args))
        except RedisError as error:
            raise AdmissionUnavailable(f"Redis did not answer: {error}") from error
        count = len(rules.windows)
        seen = [_Seen(*reply[1 + 5 * i:6 + 5 * i]) for i in range(count)]
        spent = [_Spent(*reply[1 + 5 * count + 2 * j:3 + 5 * count + 2 * j])
                 for j in range(len(rules.quotas))]
        return _decide(rules, estimated_tokens, reply[0] == 1, seen, spent)

    async def settle(
        self, principal: Principal, request_id: str, reserved_tokens: int, used_tokens: int
    ) -> None:
        _check_arguments(request_id, reserved_tokens, used_tokens)
        windows, quotas = _rules(principal).settled
        if used_tokens == reserved_tokens or not (windows or quotas):
            return
        keys = [window.prefix + "tok" for window in windows] + [quota.prefix for quota in quotas]
        args: list[str | int] = [request_id, used_tokens, reserved_tokens, len(windows)]
        args += [quota.period for quota in quotas]
        try:
            await self._settle(keys=keys, args=args)
        except RedisError as error:
            logger.warning("settling request %s failed, its %d reserved tokens stay charged: %s",
                           request_id, reserved_tokens, error)


def _limit(value: int | None) -> int:
    return -1 if value is None else value


class _Log:
    """A subject's window in memory: request id -> (admission ms, tokens), oldest first."""

    __slots__ = ("entries", "tokens")

    def __init__(self) -> None:
        self.entries: collections.OrderedDict[str, tuple[float, int]] = collections.OrderedDict()
        self.tokens = 0

    def prune(self, cutoff: float) -> None:
        entries = self.entries
        while entries:
            at, amount = entries[next(iter(entries))]
            if at > cutoff:
                return
            entries.popitem(last=False)
            self.tokens -= amount

    def check(self, window: _Window, estimate: int, now: float) -> tuple[int, int]:
        """Prune, then the waits (ms, 0: passes) of the window's request and token limits."""
        self.prune(now - _WINDOW_MS)
        request_wait = token_wait = 0
        if window.requests is not None and len(self.entries) >= window.requests:
            request_wait = self.requests_wait(window.requests, now)
        if window.tokens is not None and estimate > window.tokens:
            token_wait = _NEVER
        elif window.tokens is not None and self.tokens + estimate > window.tokens:
            token_wait = self.tokens_wait(self.tokens + estimate - window.tokens, now)
        return request_wait, token_wait

    def add(self, request_id: str, now: float, tokens: int) -> None:
        self.entries[request_id] = (now, tokens)
        self.tokens += tokens

    def requests_wait(self, limit: int, now: float) -> int:
        """Until one more request fits under ``limit`` (the log holds at least ``limit``)."""
        if limit == 0:
            return _NEVER
        at, _amount = next(itertools.islice(self.entries.values(), len(self.entries) - limit, None))
        return _wait(at, now)

    def tokens_wait(self, excess: int, now: float) -> int:
        freed = 0
        for at, amount in self.entries.values():
            freed += amount
            if freed >= excess:
                return _wait(at, now)
        return _WINDOW_MS

    def reset_ms(self, now: float) -> int:
        if not self.entries:
            return 0
        return _wait(self.entries[next(reversed(self.entries))][0], now)


def _wait(at: float, now: float) -> int:
    """Milliseconds until an entry logged at ``at`` leaves the window (at least 1)."""
    return max(1, math.ceil(at + _WINDOW_MS - now))


def _period(seconds: float, name: Period) -> tuple[str, int]:
    """The label of the UTC period holding ``seconds`` and its end (epoch seconds)."""
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


class MemoryAdmission(Admission):
    """The same limits and quotas in this process (one machine); see the module docstring.

    Windows run on the monotonic clock, quota periods on the wall clock. Idle windows and
    ended periods are dropped once a minute.
    """

    def __init__(self) -> None:
        self._logs: dict[str, _Log] = {}
        self._counters: dict[str, tuple[int, int]] = {}  # key -> (used, period end + grace)
        self._swept_ms = time.monotonic() * 1000
        self._periods: dict[Period, tuple[float, int, str]] = {}  # name -> (start, end, label)

    async def admit(self, principal: Principal, request_id: str, estimated_tokens: int) -> Decision:
        _check_arguments(request_id, estimated_tokens)
        rules = _rules(principal)
        if not rules.windows and not rules.quotas:
            return _admitted_freely()
        now, wall = time.monotonic() * 1000, time.time()
        self._sweep(now)
        logs = [self._logs.setdefault(window.prefix, _Log()) for window in rules.windows]
        checks = [log.check(window, estimated_tokens, now)
                  for window, log in zip(rules.windows, logs, strict=True)]
        counters: list[tuple[str, int, int, int]] = []  # (key, period end, used, wait ms)
        for quota in rules.quotas:
            label, end = self._period(wall, quota.period)
            used = self._counters.get(quota.prefix + label, (0, 0))[0]
            wait = 0
            if estimated_tokens > quota.tokens:
                wait = _NEVER
            elif used + estimated_tokens > quota.tokens:
                wait = max(1, math.ceil((end - wall) * 1000))
            counters.append((quota.prefix + label, end, used, wait))
        admitted = not any([*itertools.chain(*checks), *(wait for *_, wait in counters)])
        if admitted:
            for window, log in zip(rules.windows, logs, strict=True):
                log.add(request_id, now, estimated_tokens if window.tokens is not None else 0)
            counters = [(key, end, used + estimated_tokens, 0) for key, end, used, _ in counters]
            for key, end, used, _wait in counters:
                self._counters[key] = (used, end + _QUOTA_GRACE_S)
        seen = [_Seen(len(log.entries), log.tokens, log.reset_ms(now), *check)
                for log, check in zip(logs, checks, strict=True)]
        spent = [_Spent(used, wait) for _key, _end, used, wait in counters]
        return _decide(rules, estimated_tokens, admitted, seen, spent)

    async def settle(
        self, principal: Principal, request_id: str, reserved_tokens: int, used_tokens: int
    ) -> None:
        _check_arguments(request_id, reserved_tokens, used_tokens)
        windows, quotas = _rules(principal).settled
        if used_tokens == reserved_tokens:
            return
        for window in windows:
            log = self._logs.get(window.prefix)
            if log is not None and request_id in log.entries:
                at, logged = log.entries[request_id]
                log.entries[request_id] = (at, used_tokens)
                log.tokens += used_tokens - logged
        wall = time.time()
        for quota in quotas:
            label, end = self._period(wall, quota.period)
            key = quota.prefix + label
            used = self._counters.get(key, (0, 0))[0]
            self._counters[key] = (max(0, used + used_tokens - reserved_tokens),
                                   end + _QUOTA_GRACE_S)

    def _period(self, wall: float, name: Period) -> tuple[str, int]:
        """``_period``, remembered until the period ends."""
        start, end, label = self._periods.get(name, (0.0, 0, ""))
        if not start <= wall < end:
            label, end = _period(wall, name)
            start = wall
            self._periods[name] = (start, end, label)
        return label, end

    def _sweep(self, now: float) -> None:
        """Drop the windows with nothing left in them and the counters of ended periods."""
        if now - self._swept_ms < _WINDOW_MS:
            return
        self._swept_ms = now
        for key, log in list(self._logs.items()):
            log.prune(now - _WINDOW_MS)
            if not log.entries:
                del self._logs[key]
        wall = time.time()
        for key, (_used, expiry) in list(self._counters.items()):
            if expiry < wall:
                del self._counters[key]
