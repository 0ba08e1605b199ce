"""``RedisAdmission``: the rules in Redis, shared by any number of gateways.

Keys: per subject (``t:<token id>``, ``u:<user id>``) its window ``uplion:rl:<subject>``, a HASH of
buckets (``window.lua``) expiring a second after its newest bucket leaves it; per quota and
period the counter ``uplion:quota:<subject>:<period>`` (``2025-06``, ``2025-06-01``,
``2025-06-01T13``), expiring a day after the period ends; per held reservation its record
``uplion:reservation:<request id>`` (a HASH: state, admission time, tokens, where they were
charged) and the end of its hold in the index ``uplion:reservations`` (a ZSET), the record kept
``rules.SETTLED_KEEP_MS`` once settled or returned; per client address with failed
authentications its window ``uplion:authfail:<address>`` and, while it waits, the end of its
wait ``uplion:authfail:<address>:until``.

Why it is exact: one admission is one Lua script (``admit.lua``), and Redis runs a script alone,
so the tallies, every check and the reservation happen as one step with no other admission in
between. Time is the server's (``TIME``), so the gateways' clocks do not matter; the period of a
quota comes from it too, so the script appends it to a prefix passed in ``KEYS`` (fine on one
Redis, replicated or not; not on Redis Cluster; ``expire.lua`` likewise reads the keys a record
names). The work of a check is bounded: a window is at most ``SPAN`` buckets, a quota one
counter; ``expire`` returns at most ``_EXPIRE_BATCH`` reservations per script call.

Retries: a command lost with its connection (a reset, a connection the pool kept from before a
restart of Redis) is sent once more, on a new connection (``_RETRIES``: enough for a connection
gone stale, and quick to give up while Redis is down). For a held reservation that is safe: its
record makes a second admission of the same request, or a second settlement, count once (the
gateway holds every reservation it settles). An admission without a hold sent twice may count
its request twice, and a failed authentication may be counted twice; a timeout is never sent
again. Redis not answering is ``AdmissionUnavailable`` (answered 503, which OpenAI's clients
retry). Failed authentications fail open: when Redis does not answer, an attempt is let through
to the token store.
"""

from __future__ import annotations

import logging
import math
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
_RECORD_PREFIX = "uplion:reservation:"
_INDEX = "uplion:reservations"
_EXPIRE_BATCH = 100
_RETRIES = 1
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
        self._redis = redisio.client(redis_url, timeout_s=timeout_s, retries=_RETRIES,
                                     pool_size=_POOL_SIZE)
        package = __package__
        self._admit = redisio.script(self._redis, package, "window.lua", "calendar.lua",
                                     "admit.lua")
        self._settle = redisio.script(self._redis, package, "charge.lua", "settle.lua")
        self._expire = redisio.script(self._redis, package, "window.lua", "charge.lua",
                                      "expire.lua")
        self._auth_failed = redisio.script(self._redis, package, "window.lua", "auth_failed.lua")
        self._auth_wait = redisio.script(self._redis, package, "window.lua", "auth_wait.lua")
        self._open_stream = redisio.script(self._redis, package, "window.lua",
                                           "open_stream.lua")

    async def start(self) -> None:
        """Check that Redis answers and load the scripts (fail fast on a wrong URL)."""
        try:
            for script in (self._admit, self._settle, self._expire, self._auth_failed,
                           self._auth_wait, self._open_stream):
                await self._redis.script_load(script.script)
        except redisio.Error as error:
            raise AdmissionUnavailable(f"Redis did not answer: {error}") from error

    async def close(self) -> None:
        await self._redis.aclose()

    def _now_arg(self) -> str | int:
        return "" if self.clock is None else self.clock()

    async def admit(self, principal: Principal, request_id: str, estimated_tokens: int,
                    hold_s: float | None = None) -> Decision:
        """Check and reserve in one script call; raises ``AdmissionUnavailable`` without Redis."""
        check_arguments(request_id, estimated_tokens, hold_s=hold_s)
        checked = rules.rules_of(principal)
        if not checked.windows and not checked.quotas:
            now = (self.clock or wall_clock)()
            return decide.decision(principal, request_id, estimated_tokens, now, checked, [], [],
                                   True)
        held = rules.holds(checked, estimated_tokens, hold_s)
        hold_ms = round(hold_s * 1000) if held and hold_s is not None else -1
        keys = [window.key for window in checked.windows] + [q.key for q in checked.quotas]
        if held:
            keys += [_RECORD_PREFIX + request_id, _INDEX]
        args: list[str | int] = [self._now_arg(), *_WINDOW_ARGS, rules.QUOTA_GRACE_S,
                                 estimated_tokens, len(checked.windows), hold_ms, request_id]
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
                               used, admitted, held)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        check_arguments(reservation.request_id, reservation.tokens, used_tokens)
        checked = rules.rules_of(reservation.principal)
        windows = checked.settled_windows
        if not reservation.held and (used_tokens == reservation.tokens
                                     or not (windows or checked.quotas)):
            return
        keys = [window.key for window in windows]
        keys += [rules.counter_key(quota, reservation.admitted_ms) for quota in checked.quotas]
        if reservation.held:
            keys += [_RECORD_PREFIX + reservation.request_id, _INDEX]
        field = f"t:{rules.bucket_of(reservation.admitted_ms)}"
        try:
            await self._settle(keys=keys, args=[
                field, used_tokens, reservation.tokens, len(windows),
                "1" if reservation.held else "0", rules.SETTLED_KEEP_MS, reservation.request_id,
            ])
        except redisio.Error as error:
            logger.warning("settling request %s failed, its %d reserved tokens stay charged%s: "
                           "%s", reservation.request_id, reservation.tokens,
                           " until its hold ends" if reservation.held else "", error)

    async def expire(self) -> int:
        """Return the reservations whose hold is over, a batch per script call; raises
        ``redisio.Error`` when Redis does not answer."""
        returned = 0
        while True:
            done, looked_at = cast(list[int], await self._expire(
                keys=[_INDEX], args=[self._now_arg(), _EXPIRE_BATCH, rules.SETTLED_KEEP_MS,
                                     _RECORD_PREFIX]))
            returned += done
            if looked_at < _EXPIRE_BATCH:
                return returned

    async def open_stream(self, token_id: str, stream_id: str, cap: int, lease_s: float) -> bool:
        try:
            opened = await self._open_stream(
                keys=[rules.streams_key(token_id)],
                args=[self._now_arg(), stream_id, cap, math.ceil(lease_s * 1000)])
        except redisio.Error as error:
            raise AdmissionUnavailable(f"Redis did not answer: {error}") from error
        return bool(opened)

    async def close_stream(self, token_id: str, stream_id: str) -> None:
        try:
            await self._redis.zrem(rules.streams_key(token_id), stream_id)
        except redisio.Error as error:
            logger.warning("stream %s of token %s not closed (its lease ends it): %s",
                           stream_id, token_id, error)

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
