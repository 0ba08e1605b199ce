"""``MemoryAdmission``: the rules on dictionaries, for one process (``uplion run``).

A check and its reservation run with no ``await`` in between, so they are atomic in the event
loop. Windows and counters that have nothing left in them are dropped once a minute.
"""

from __future__ import annotations

from uplion import config
from uplion.accounts.principal import Principal
from uplion.gateway.admission import decide, rules
from uplion.gateway.admission.base import (
    Admission,
    Clock,
    Decision,
    Reservation,
    check_arguments,
    wall_clock,
)

_SWEEP_MS = 60_000

Buckets = dict[int, list[int]]  # bucket -> [requests, tokens]


class MemoryAdmission(Admission):
    """The limits, quotas and failed-authentication limits of ``rules``, in this process."""

    def __init__(self, *, auth_failures_per_minute: int = config.AUTH_FAILURES_PER_MINUTE,
                 clock: Clock | None = None) -> None:
        super().__init__(auth_failures_per_minute=auth_failures_per_minute, clock=clock)
        self._now = clock or wall_clock
        self._windows: dict[str, Buckets] = {}
        self._counters: dict[str, tuple[int, int]] = {}  # key -> (used, expiry ms)
        self._blocked: dict[str, int] = {}  # failures window key -> blocked until (ms)
        self._swept_ms = self._now()

    async def admit(self, principal: Principal, request_id: str, estimated_tokens: int) -> Decision:
        check_arguments(request_id, estimated_tokens)
        checked = rules.rules_of(principal)
        now = self._now()
        self._sweep(now)
        tallies = [self._tally(window.key, now) for window in checked.windows]
        used = [self._used(rules.counter_key(quota, now), now) for quota in checked.quotas]
        admitted = rules.admits(checked, tallies, used, estimated_tokens)
        if admitted:
            bucket = rules.bucket_of(now)
            for window in checked.windows:
                counts = self._windows.setdefault(window.key, {}).setdefault(bucket, [0, 0])
                if window.requests is not None:
                    counts[0] += 1
                if window.tokens is not None:
                    counts[1] += estimated_tokens
            for quota, spent in zip(checked.quotas, used, strict=True):
                end_s = rules.period(now // 1000, quota.period)[1]
                self._counters[rules.counter_key(quota, now)] = (
                    spent + estimated_tokens, (end_s + rules.QUOTA_GRACE_S) * 1000)
        return decide.decision(principal, request_id, estimated_tokens, now, checked, tallies,
                               used, admitted)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        check_arguments(reservation.request_id, reservation.tokens, used_tokens)
        delta = used_tokens - reservation.tokens
        if delta == 0:
            return
        checked = rules.rules_of(reservation.principal)
        bucket = rules.bucket_of(reservation.admitted_ms)
        for window in checked.settled_windows:
            counts = self._windows.get(window.key, {}).get(bucket)
            if counts is not None:
                counts[1] = max(0, counts[1] + delta)
        for quota in checked.quotas:
            key = rules.counter_key(quota, reservation.admitted_ms)
            if key in self._counters:
                spent, expiry = self._counters[key]
                self._counters[key] = (max(0, spent + delta), expiry)

    async def auth_wait(self, address: str) -> float:
        until = self._blocked.get(rules.failures_key(address), 0)
        return max(0, until - self._now()) / 1000

    async def auth_failed(self, address: str) -> None:
        key = rules.failures_key(address)
        now = self._now()
        self._sweep(now)
        failures = self._tally(key, now).plus(rules.bucket_of(now), 1, 0)
        self._windows.setdefault(key, {}).setdefault(rules.bucket_of(now), [0, 0])[0] += 1
        wait = rules.failures_wait(failures, self.auth_failures_per_minute, now)
        if wait > 0:
            self._blocked[key] = now + wait

    def _tally(self, key: str, now: int) -> rules.Tally:
        """A window's live buckets; the ones that left it are deleted."""
        buckets = self._windows.get(key)
        if buckets is None:
            return rules.Tally()
        oldest = rules.oldest_live(now)
        for bucket in [bucket for bucket in buckets if bucket < oldest]:
            del buckets[bucket]
        return rules.Tally.of(buckets, now)

    def _used(self, key: str, now: int) -> int:
        spent, expiry = self._counters.get(key, (0, 0))
        return spent if expiry > now else 0

    def _sweep(self, now: int) -> None:
        """Drop the windows with nothing left in them, ended counters and blocks."""
        if now - self._swept_ms < _SWEEP_MS:
            return
        self._swept_ms = now
        for key in list(self._windows):
            if not self._tally(key, now).buckets:
                del self._windows[key]
        self._counters = {key: held for key, held in self._counters.items() if held[1] > now}
        self._blocked = {key: until for key, until in self._blocked.items() if until > now}
