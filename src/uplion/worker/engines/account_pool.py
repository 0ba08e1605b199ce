"""The accounts (API keys) an upstream model is served with, and which one takes the next request.

Each account has its own limits: requests in flight (``max_concurrency``), requests and tokens per
sliding minute. ``acquire`` leases the least-loaded account with room, waiting while every live
account is busy. An account is ``ready``, ``cooling`` (told to slow down by a 429, until a moment)
or ``dead`` (its key was refused with a 401/403). A dead account is re-tested in the background
with a cheap probe, its key read again each time, so fixing a key file or variable heals it.

A request's own 401/403 proves nothing about the key (the provider may refuse that request, that
model, that content): ``verify`` asks the probe with the key, once for all the requests refused
at that moment, and only its ``refused`` verdict lets the caller retire the account.

Keys are read from environment variables or files, never from the models file; they are kept out
of reprs and logs, which name accounts only. An account that names neither reads the file of its
name in the keys folder (``$UPLION_DATA_DIR/keys/<account>``; in a cluster, the operator turns
the AIModel's ``engine.secretRefs`` into variables).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

WINDOW_S = 60.0
"""The sliding window of the per-minute limits."""

COOLDOWN_CAP_S = 60.0
"""The longest an account cools down after a 429, whatever the upstream asks."""

Probe = Callable[[str], Awaitable[int]]
"""Asks the upstream something cheap with a key; the HTTP status it answered."""

Verdict = Literal["refused", "accepted", "unknown"]
"""What a probe says of a key: refused (401/403), accepted, or unknown (no answer, a 5xx)."""


class KeyUnavailable(Exception):
    """An account's key cannot be read (variable unset or empty, file missing or empty)."""


class AllAccountsDead(Exception):
    """Every account's key was refused; nothing can be served until one is fixed."""


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where an account's key is read from: an environment variable or a file (one of the two);
    ``in_keys_folder`` when the file is the account's default, in the keys folder."""

    env: str | None = None
    file: Path | None = None
    in_keys_folder: bool = False

    def read(self) -> str:
        if self.env is not None:
            key = os.environ.get(self.env, "").strip()
            if not key:
                raise KeyUnavailable(f"environment variable {self.env} is not set or empty")
            return key
        if self.file is None:
            raise KeyUnavailable("no api_key_env or api_key_file is given")
        try:
            key = self.file.read_text().strip()
        except OSError as error:
            if self.in_keys_folder:
                raise KeyUnavailable(
                    f"no key: write it to {self.file} (one machine), or name a Secret key for "
                    "the account in the AIModel's engine.secretRefs (cluster)"
                ) from None
            raise KeyUnavailable(
                f"key file {self.file} cannot be read ({error.strerror or error})"
            ) from None
        if not key:
            raise KeyUnavailable(f"key file {self.file} is empty")
        return key


@dataclass(frozen=True, slots=True)
class AccountConfig:
    name: str
    key: KeySource
    max_concurrency: int = 4
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


class Account:
    """One account: its limits, its state and what it does now. Its repr never shows the key."""

    def __init__(self, config: AccountConfig) -> None:
        self.config = config
        self.name = config.name
        self.key = ""
        self.in_flight = 0
        self.cooling_until = 0.0
        self.dead_reason: str | None = None
        self.rate_limit_streak = 0
        self.last_start = 0.0
        self._starts: deque[float] = deque()
        self._tokens: deque[tuple[float, int]] = deque()
        self._token_total = 0

    def __repr__(self) -> str:
        return f"Account({self.name!r}, {self.state(time.monotonic())})"

    def state(self, now: float) -> str:
        if self.dead_reason is not None:
            return "dead"
        return "cooling" if now < self.cooling_until else "ready"

    def throttled(self, now: float) -> bool:
        """Cooling down, or its requests or tokens of the last minute reached their limit."""
        self._forget(now)
        rpm, tpm = self.config.requests_per_minute, self.config.tokens_per_minute
        return (
            now < self.cooling_until
            or (rpm is not None and len(self._starts) >= rpm)
            or (tpm is not None and self._token_total >= tpm)
        )

    def has_room(self, now: float) -> bool:
        return (
            self.dead_reason is None
            and self.in_flight < self.config.max_concurrency
            and not self.throttled(now)
        )

    def room_at(self, now: float) -> float | None:
        """When a throttled account may have room again (``None``: when a request ends)."""
        rpm, tpm = self.config.requests_per_minute, self.config.tokens_per_minute
        times: list[float] = []
        if now < self.cooling_until:
            times.append(self.cooling_until)
        if rpm is not None and self._starts and len(self._starts) >= rpm:
            times.append(self._starts[0] + WINDOW_S)
        if tpm is not None and self._tokens and self._token_total >= tpm:
            times.append(self._tokens[0][0] + WINDOW_S)
        return max(times) if times else None

    def start(self, now: float) -> None:
        self.in_flight += 1
        self.last_start = now
        self._starts.append(now)

    def spend(self, now: float, tokens: int) -> None:
        if tokens > 0:
            self._tokens.append((now, tokens))
            self._token_total += tokens

    def _forget(self, now: float) -> None:
        horizon = now - WINDOW_S
        while self._starts and self._starts[0] <= horizon:
            self._starts.popleft()
        while self._tokens and self._tokens[0][0] <= horizon:
            self._token_total -= self._tokens.popleft()[1]


class Lease:
    """An account held for one request; ``release`` (idempotent) gives its slot back."""

    def __init__(self, pool: AccountPool, account: Account) -> None:
        self.pool = pool
        self.account = account
        self.key = account.key
        self._released = False

    def __repr__(self) -> str:
        return f"Lease({self.account.name!r})"

    def release(self, tokens: int = 0) -> None:
        """Free the slot; ``tokens`` used by the request count against the account's minute."""
        if self._released:
            return
        self._released = True
        self.account.in_flight -= 1
        self.account.spend(time.monotonic(), tokens)
        self.pool.notify()


class AccountPool:
    def __init__(
        self, configs: Sequence[AccountConfig], probe: Probe, retest_interval_s: float = 30.0
    ) -> None:
        self.accounts = [Account(config) for config in configs]
        self.retest_interval_s = retest_interval_s
        self._probe = probe
        self._changed = asyncio.Event()
        self._retests: dict[str, asyncio.Task[None]] = {}
        self._verifying: dict[tuple[str, str], asyncio.Task[Verdict]] = {}

    def read_keys(self) -> None:
        """Read every account's key; raise ``KeyUnavailable`` naming each one that failed."""
        problems: list[str] = []
        for account in self.accounts:
            try:
                account.key = account.config.key.read()
            except KeyUnavailable as error:
                problems.append(f"account {account.name!r}: {error}")
        if problems:
            raise KeyUnavailable("; ".join(problems))

    async def check(self) -> None:
        """Probe every account once, at start; the ones whose key is refused start dead."""
        statuses = await asyncio.gather(
            *(self._probe(account.key) for account in self.accounts), return_exceptions=True
        )
        for account, status in zip(self.accounts, statuses, strict=True):
            if status in (401, 403):
                self.mark_dead(account, f"{status}")
            elif isinstance(status, BaseException):
                # Unreachable for now: requests will find out, with their own retries.
                log.warning("account %s: probe failed (%s)", account.name, type(status).__name__)

    @property
    def all_dead(self) -> bool:
        return all(account.dead_reason is not None for account in self.accounts)

    def throttled(self) -> bool:
        """Every live account is cooling down or at its per-minute limit (not merely busy)."""
        now = time.monotonic()
        return all(a.dead_reason is not None or a.throttled(now) for a in self.accounts)

    def down(self) -> list[str]:
        """The accounts that take no requests now, as ``name (401)`` or ``name (cooling 12 s)``."""
        now = time.monotonic()
        described: list[str] = []
        for account in self.accounts:
            if account.dead_reason is not None:
                described.append(f"{account.name} ({account.dead_reason})")
            elif now < account.cooling_until:
                seconds = math.ceil(account.cooling_until - now)
                described.append(f"{account.name} (cooling {seconds} s)")
        return described

    async def acquire(self, timeout: float, avoid: Collection[str] = ()) -> Lease:
        """Lease the least-loaded account with room, preferring accounts not named in ``avoid``.

        Waits while every live account is busy or throttled; raises ``TimeoutError`` after
        ``timeout`` seconds and ``AllAccountsDead`` as soon as no account is alive.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.all_dead:
                raise AllAccountsDead(", ".join(self.down()))
            now = time.monotonic()
            candidates = [account for account in self.accounts if account.has_room(now)]
            if candidates:
                account = min(candidates, key=lambda a: (
                    a.name in avoid, a.in_flight / a.config.max_concurrency, a.in_flight,
                    a.last_start,
                ))
                account.start(now)
                return Lease(self, account)
            if now >= deadline:
                raise TimeoutError
            # Wake when a slot is freed or an account revives (notify), or a throttle lifts.
            wake = deadline
            for account in self.accounts:
                if account.dead_reason is None:
                    wake = min(wake, account.room_at(now) or deadline)
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake - now)):
                    await changed.wait()

    def notify(self) -> None:
        """Wake the requests waiting for an account (a slot was freed, an account revived)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def succeeded(self, account: Account) -> None:
        account.rate_limit_streak = 0

    def cool_down(self, account: Account, retry_after: float | None) -> None:
        """A 429: rest the account for ``retry_after`` seconds, else 1, 2, 4… (capped)."""
        now = time.monotonic()
        if now >= account.cooling_until:
            account.rate_limit_streak += 1
        if retry_after is None:
            seconds = min(COOLDOWN_CAP_S, 2.0 ** (account.rate_limit_streak - 1))
        else:
            seconds = min(COOLDOWN_CAP_S, max(0.0, retry_after))
        if now + seconds > account.cooling_until:
            account.cooling_until = now + seconds
            log.info("account %s rate limited; cooling down for %.1f s", account.name, seconds)

    def mark_dead(self, account: Account, reason: str) -> None:
        """The key was refused: take no requests on it, and re-test it in the background."""
        if account.dead_reason is None:
            log.warning(
                "account %s: key refused (%s); re-testing every %g s",
                account.name, reason, self.retest_interval_s,
            )
        account.dead_reason = reason
        if account.name not in self._retests:
            task = asyncio.create_task(self._retest(account), name=f"retest-{account.name}")
            self._retests[account.name] = task
            task.add_done_callback(lambda _: self._retests.pop(account.name, None))
        # Waiters must learn at once when the last live account died.
        self.notify()

    async def verify(self, account: Account, key: str) -> Verdict:
        """Probe ``key`` of ``account`` after a request was refused with it; the requests
        refused at the same moment share one probe. Retires nothing: the caller decides."""
        slot = (account.name, key)
        probing = self._verifying.get(slot)
        if probing is None:
            probing = asyncio.create_task(self._verdict(key), name=f"verify-{account.name}")
            self._verifying[slot] = probing
            probing.add_done_callback(lambda _: self._verifying.pop(slot, None))
        verdict = await asyncio.shield(probing)
        log.info("account %s: probe after a refused request says the key is %s",
                 account.name, verdict)
        return verdict

    async def _verdict(self, key: str) -> Verdict:
        try:
            status = await self._probe(key)
        except Exception as error:  # unreachable upstream: nothing is known of the key
            log.warning("probe failed (%s)", type(error).__name__)
            return "unknown"
        if status in (401, 403):
            return "refused"
        return "unknown" if status >= 500 else "accepted"

    async def close(self) -> None:
        tasks = [*self._retests.values(), *self._verifying.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _retest(self, account: Account) -> None:
        while account.dead_reason is not None:
            await asyncio.sleep(self.retest_interval_s)
            try:
                key = account.config.key.read()
            except KeyUnavailable as error:
                log.warning("account %s: %s", account.name, error)
                continue
            try:
                status = await self._probe(key)
            except Exception as error:  # unreachable upstream: still unknown, try again later
                log.warning("account %s: re-test failed (%s)", account.name, type(error).__name__)
                continue
            if status in (401, 403):
                account.dead_reason = f"{status}"
            elif status < 500:
                # Anything but a refusal or a server error means the key is accepted again.
                account.key = key
                account.dead_reason = None
                account.rate_limit_streak = 0
                log.info("account %s: key accepted again; back in service", account.name)
                self.notify()
