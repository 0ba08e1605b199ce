"""``MemoryAdmission``: the rules on dictionaries, for one process (``uplion run``).

A check and its reservation run with no ``await`` in between, so they are atomic in the event
loop. Windows and counters that have nothing left in them, and the ends of held reservations
past ``rules.SETTLED_KEEP_MS``, are dropped once a minute.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class _Held:
    """A held reservation's record: where its estimate was charged, until when it holds."""

    tokens: int
    admitted_ms: int
    windows: tuple[str, ...]  # the windows whose bucket counts its tokens
    counters: tuple[str, ...]  # the quota counters of its periods
    until_ms: int


class MemoryAdmission(Admission):
    """The limits, quotas and failed-authentication limits of ``rules``, in this process."""

    def __init__(self, *, auth_failures_per_minute: int = config.AUTH_FAILURES_PER_MINUTE,
                 clock: Clock | None = None) -> None:
        super().__init__(auth_failures_per_minute=auth_failures_per_minute, clock=clock)
        self._now = clock or wall_clock
        self._windows: dict[str, Buckets] = {}
        self._counters: dict[str, tuple[int, int]] = {}  # key -> (used, expiry ms)
        self._blocked: dict[str, int] = {}  # failures window key -> blocked until (ms)
        self._held: dict[str, _Held] = {}  # request id -> its held reservation
        self._ended: dict[str, tuple[str, int]] = {}  # request id -> ("settled" | "expired",
        # forgotten at ms)
        self._streams: dict[str, dict[str, int]] = {}  # token -> stream id -> lease end (ms)
        self._swept_ms = self._now()

    async def admit(self, principal: Principal, request_id: str, estimated_tokens: int,
                    hold_s: float | None = None) -> Decision:
        check_arguments(request_id, estimated_tokens, hold_s=hold_s)
        checked = rules.rules_of(principal)
        held = rules.holds(checked, estimated_tokens, hold_s)
        now = self._now()
        self._sweep(now)
        tallies = [self._tally(window.key, now) for window in checked.windows]
        used = [self._used(rules.counter_key(quota, now), now) for quota in checked.quotas]
        again = self._held.get(request_id) if held else None
        if again is not None:  # admitted before: the same reservation, nothing more
            return decide.decision(principal, request_id, estimated_tokens, again.admitted_ms,
                                   checked, tallies, used, True, held)
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
            if held:
                assert hold_s is not None
                self._held[request_id] = _Held(
                    estimated_tokens, now,
                    tuple(window.key for window in checked.settled_windows),
                    tuple(rules.counter_key(quota, now) for quota in checked.quotas),
                    now + round(hold_s * 1000))
        return decide.decision(principal, request_id, estimated_tokens, now, checked, tallies,
                               used, admitted, held)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        check_arguments(reservation.request_id, reservation.tokens, used_tokens)
        delta = used_tokens - reservation.tokens
        if reservation.held:
            ended = self._ended.get(reservation.request_id)
            if ended is not None and ended[0] == "settled":
                return
            if self._held.pop(reservation.request_id, None) is None:
                delta = used_tokens  # its estimate was returned when its hold ended
            self._ended[reservation.request_id] = ("settled",
                                                   self._now() + rules.SETTLED_KEEP_MS)
        checked = rules.rules_of(reservation.principal)
        self._charge(rules.bucket_of(reservation.admitted_ms),
                     [window.key for window in checked.settled_windows],
                     [rules.counter_key(quota, reservation.admitted_ms)
                      for quota in checked.quotas], delta)

    async def expire(self) -> int:
        now = self._now()
        due = [request_id for request_id, held in self._held.items() if held.until_ms <= now]
        for request_id in due:
            held = self._held.pop(request_id)
            self._charge(rules.bucket_of(held.admitted_ms), held.windows, held.counters,
                         -held.tokens)
            self._ended[request_id] = ("expired", now + rules.SETTLED_KEEP_MS)
        return len(due)

    def _charge(self, bucket: int, windows: Sequence[str], counters: Sequence[str],
                delta: int) -> None:
        """Add ``delta`` tokens to ``bucket`` of the windows that still hold it and to the quota
        counters that still exist, never below zero."""
        if delta == 0:
            return
        for key in windows:
            counts = self._windows.get(key, {}).get(bucket)
            if counts is not None:
                counts[1] = max(0, counts[1] + delta)
        for key in counters:
            if key in self._counters:
                spent, expiry = self._counters[key]
                self._counters[key] = (max(0, spent + delta), expiry)

    async def open_stream(self, token_id: str, stream_id: str, cap: int, lease_s: float) -> bool:
        now = self._now()
        leases = self._streams.setdefault(token_id, {})
        for ended in [held for held, until in leases.items() if until <= now]:
            del leases[ended]
        if len(leases) >= cap:
            return False
        leases[stream_id] = now + math.ceil(lease_s * 1000)
        return True

    async def close_stream(self, token_id: str, stream_id: str) -> None:
        leases = self._streams.get(token_id)
        if leases is not None:
            leases.pop(stream_id, None)
            if not leases:
                del self._streams[token_id]

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
        self._ended = {key: end for key, end in self._ended.items() if end[1] > now}
