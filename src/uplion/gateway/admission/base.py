"""What admission answers and what it holds: ``Decision``, ``Reservation`` and the interface."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass

from uplion import config
from uplion.accounts.principal import Principal

Clock = Callable[[], int]
"""Epoch milliseconds."""


def wall_clock() -> int:
    return time.time_ns() // 1_000_000


class AdmissionUnavailable(Exception):
    """The store of counters did not answer: nothing can be decided (the gateway answers 503)."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """What an admitted request holds until it is settled.

    ``admitted_ms`` is the store's clock at admission: it names the window bucket and the quota
    periods the estimate was charged to, which is where ``settle`` corrects it. ``held``: the
    reservation is recorded, and returned by ``Admission.expire`` unless settled in its hold.
    """

    principal: Principal
    request_id: str
    tokens: int
    admitted_ms: int
    held: bool = False


@dataclass(frozen=True)
class Decision:
    """An admission's answer.

    ``headers``: OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the
    tightest applicable limit of each kind (remaining counts this request when admitted; reset is
    when the window is empty again), and ``Retry-After`` (whole seconds) when refused.
    ``reservation``: what to ``settle`` when the request ends (``None`` exactly when refused).
    """

    allowed: bool
    code: str | None  # "rate_limit_exceeded" | "insufficient_quota" | None
    message: str
    retry_after_s: float | None
    headers: dict[str, str]
    reservation: Reservation | None = None


class Admission(abc.ABC):
    """Admits or refuses requests against a principal's rate limits and quotas, settles what
    admitted requests used, and limits failed authentications per client address.

    The rules are ``rules``'s; ``auth_failures_per_minute`` is the failed authentications a client
    address may have in any minute before its further attempts wait. ``clock`` (epoch ms) replaces
    the store's clock (tests move it).
    """

    def __init__(self, *, auth_failures_per_minute: int = config.AUTH_FAILURES_PER_MINUTE,
                 clock: Clock | None = None) -> None:
        if auth_failures_per_minute < 1:
            raise ValueError("auth_failures_per_minute must be at least 1")
        self.auth_failures_per_minute = auth_failures_per_minute
        self.clock = clock  # None: the store's own clock

    async def start(self) -> None:  # noqa: B027  # nothing to open unless overridden
        """Open what the admission needs."""

    async def close(self) -> None:  # noqa: B027  # nothing to close unless overridden
        """Release it."""

    @abc.abstractmethod
    async def admit(self, principal: Principal, request_id: str, estimated_tokens: int,
                    hold_s: float | None = None) -> Decision:
        """Check every rule at once; when all pass, log the request and reserve its estimate.

        ``request_id`` is unique per request; ``estimated_tokens`` is the most it may use
        (prompt estimate + ``max_tokens``), 0 when unknown. ``hold_s``: how long the reservation
        may wait for its settlement before ``expire`` returns it (``rules``, "Held
        reservations"); ``None``: until settled.
        """

    @abc.abstractmethod
    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Replace a reservation with what its request used, in the window bucket and the quota
        periods it was charged to; once per reservation (a held one: however often it is sent).

        Never raises for the store: a failure is logged, and the reservation stays charged
        (a held one until its hold ends).
        """

    @abc.abstractmethod
    async def expire(self) -> int:
        """Return the held reservations whose hold is over (their request's gateway stopped
        without settling them); how many. Gateways call it every second or so."""

    @abc.abstractmethod
    async def open_stream(self, token_id: str, stream_id: str, cap: int, lease_s: float) -> bool:
        """Count the stream ``stream_id`` as one of ``token_id``'s open ones, for at most
        ``lease_s``, unless the token holds ``cap`` already (``rules``, "Streams"): False then.
        Raises ``AdmissionUnavailable`` when the store cannot answer."""

    @abc.abstractmethod
    async def close_stream(self, token_id: str, stream_id: str) -> None:
        """The stream is over; never raises for the store (its lease ends anyway)."""

    @abc.abstractmethod
    async def auth_wait(self, address: str) -> float:
        """Seconds until ``address`` may try to authenticate again (0: it may now)."""

    @abc.abstractmethod
    async def auth_failed(self, address: str) -> None:
        """Count a failed authentication of ``address``."""


def check_arguments(request_id: str, *tokens: int, hold_s: float | None = None) -> None:
    if not request_id:
        raise ValueError("request_id must not be empty")
    if min(tokens) < 0:
        raise ValueError("token counts must not be negative")
    if hold_s is not None and hold_s <= 0:
        raise ValueError("hold_s must be positive")
