"""``RedisAdmission``: the rules in Redis, shared by any number of gateways.

Keys: per subject (``t:<token id>``, ``u:<user id>``) its window ``uplion:rl:<subject>``, a HASH of
buckets (``window.lua``) expiring a second after its newest bucket leaves it; per quota and
period the counter ``uplion:quota:<subject>:<period>`` (``2025-06``, ``2025-06-01``,
``2025-06-01T13``), expiring a day after the period ends; per client address with failed
authentications its window ``uplion:authfail:<address>`` and, while it waits, the end of its wait
``uplion:authfail:<address>:until``.

Why it is exact: one admission is one Lua script (``admit.lua``), and Redis runs a script alone,
so the tallies, every check and the reservation happen as one step with no other admission in
between. Time is the server's (``TIME``), so the gateways' clocks do not matter; the period of a
quota comes from it too, so the script appends it to a prefix passed in ``KEYS`` (fine on one
Redis, replicated or not; not on Redis Cluster). The work of a check is bounded: a window is at
most ``SPAN`` buckets, a quota one counter. Commands are never retried: a script that ran but
whose reply was lost would reserve twice; a lost connection costs one refused request
(``AdmissionUnavailable``, answered 503, which OpenAI's clients retry). Failed authentications
fail open: when Redis does not answer, an attempt is let through to the token store.
"""

from __future__ import annotations

import logging
from typing import cast

from uplion import config, redisio
from uplion.accounts.principal import Principal
from uplion.gateway.admission import decide, rules
from uplion.gateway.admission.base import (
    Admission,
    AdmissionUnavailable,
    Clock,
    Decision,
    Reservation,
    check_arguments,
    wall_clock,
)

logger = logging.getLogger(__name__)

_POOL_SIZE = 64
_UNTIL = ":until"
_WINDOW_ARGS = (rules.BUCKET_MS, rules.SPAN, rules.KEY_SLACK_MS)


class RedisAdmission(Admission):
    """Limits and quotas shared by every gateway, in Redis; see the module docstring.

    ``admit`` raises ``AdmissionUnavailable`` when Redis is unreachable or fails (the gateway
    answers 503). ``timeout_s`` bounds connecting, each command, and waiting for one of the
    pool's connections (a ``socket_timeout`` in the URL overrides it).
    """

    def __init__(self, redis_url: str, *, timeout_s: float = 2.0,
                 auth_failures_per_minute: int = config.AUTH_FAILURES_PER_MINUTE,
                 clock: Clock | None = None) -> None:
        super().__init__(auth_failures_per_minute=auth_failures_per_minute, clock=clock)
        self._redis = redisio.client(redis_url, timeout_s=timeout_s, retries=0,
                                     pool_size=_POOL_SIZE)
        package = __package__
        self._admit = redisio.script(self._redis, package, "window.lua", "calendar.lua",
                                     "admit.lua")
        self._settle = redisio.script(self._redis, package, "settle.lua")
        self._auth_failed = redisio.script(self._redis, package, "window.lua", "auth_failed.lua")
        self._auth_wait = redisio.script(self._redis, package, "window.lua", "auth_wait.lua")

    async def start(self) -> None:
        """Check that Redis answers and load the scripts (fail fast on a wrong URL)."""
        try:
            for script in (self._admit, self._settle, self._auth_failed, self._auth_wait):
                await self._redis.script_load(script.script)
        except redisio.Error as error:
            raise AdmissionUnavailable(f"Redis did not answer: {error}") from error

    async def close(self) -> None:
        await self._redis.aclose()

    def _now_arg(self) -> str | int:
        return "" if self.clock is None else self.clock()

    async def admit(self, principal: Principal, request_id: str, estimated_tokens: int) -> Decision:
        """Check and reserve in one script call; raises ``AdmissionUnavailable`` without Redis."""
        check_arguments(request_id, estimated_tokens)
        checked = rules.rules_of(principal)
        if not checked.windows and not checked.quotas:
            now = (self.clock or wall_clock)()
            return decide.decision(principal, request_id, estimated_tokens, now, checked, [], [],
                                   True)
        keys = [window.key for window in checked.windows] + [q.key for q in checked.quotas]
        args: list[str | int] = [self._now_arg(), *_WINDOW_ARGS, rules.QUOTA_GRACE_S,
                                 estimated_tokens, len(checked.windows)]
        for window in checked.windows:
            args += [_limit(window.requests), _limit(window.tokens)]
        for quota in checked.quotas:
            args += [quota.tokens, quota.period]
        try:
            reply = cast(list[int | list[int]], await self._admit(keys=keys, args=args))
        except redisio.Error as error:
            raise AdmissionUnavailable(f"Redis did not answer: {error}") from error
        now, admitted = cast(int, reply[0]), reply[1] == 1
        count = len(checked.windows)
        tallies = [rules.Tally.from_flat(cast(list[int], live)) for live in reply[2:2 + count]]
        used = [cast(int, spent) for spent in reply[2 + count:]]
        return decide.decision(principal, request_id, estimated_tokens, now, checked, tallies,
                               used, admitted)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        check_arguments(reservation.request_id, reservation.tokens, used_tokens)
        checked = rules.rules_of(reservation.principal)
        windows = checked.settled_windows
        delta = used_tokens - reservation.tokens
        if delta == 0 or not (windows or checked.quotas):
            return
        keys = [window.key for window in windows]
        keys += [rules.counter_key(quota, reservation.admitted_ms) for quota in checked.quotas]
        field = f"t:{rules.bucket_of(reservation.admitted_ms)}"
        try:
            await self._settle(keys=keys, args=[field, delta, len(windows)])
        except redisio.Error as error:
            logger.warning("settling request %s failed, its %d reserved tokens stay charged: %s",
                           reservation.request_id, reservation.tokens, error)

    async def auth_wait(self, address: str) -> float:
        try:
            wait = await self._auth_wait(keys=[rules.failures_key(address) + _UNTIL],
                                         args=[self._now_arg()])
        except redisio.Error as error:
            logger.warning("failed authentications of %s not checked: %s", address, error)
            return 0.0
        return cast(int, wait) / 1000

    async def auth_failed(self, address: str) -> None:
        key = rules.failures_key(address)
        try:
            now, live = cast(tuple[int, list[int]], await self._auth_failed(
                keys=[key], args=[self._now_arg(), *_WINDOW_ARGS]))
            failures = rules.Tally.from_flat(live).plus(rules.bucket_of(now), 1, 0)
            wait = rules.failures_wait(failures, self.auth_failures_per_minute, now)
            if wait > 0:
                await self._redis.set(key + _UNTIL, now + wait, px=wait + rules.KEY_SLACK_MS)
        except redisio.Error as error:
            logger.warning("a failed authentication of %s was not counted: %s", address, error)


def _limit(value: int | None) -> int:
    return -1 if value is None else value
