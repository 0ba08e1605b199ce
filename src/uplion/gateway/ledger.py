"""One request's account: admitted with its maximum reserved, then settled and billed once.

``Ledger.admit`` checks the caller's rate limits and quotas and reserves the request's maximum
(prompt estimate + ``max_tokens``), held for ``hold_s``: the request's deadline, the grace for
its worker's report and ``SETTLE_MARGIN_S``. The ``Entry`` it returns ends exactly once, whatever
calls it and however often:

- ``close(status, usage)``: now. The usage event goes to billing at once (``emit`` never blocks
  or raises) and the reservation is settled with the usage off the response's path.
- ``hold(...)``: its client left while a worker may be generating. The entry waits up to
  ``grace_s`` for the worker's report of what it produced (``report``: its usage with the
  cancellation), then closes with what the gateway knew (what reached the client).

A request cancelled while admission decides (its handler stopped) gets back what admission
reserved for it. ``drain`` (on shutdown) closes held entries at once and waits for the
settlements under way.

A gateway that dies settles nothing: ``expire_held`` (run by every gateway) has the admission
return the reservations whose hold is over, so that a quota comes back to what was used.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from uplion import protocol
from uplion.accounts.principal import Principal
from uplion.billing import UsageEvent, UsageStream
from uplion.gateway.admission import Admission, Decision, Reservation
from uplion.gateway.estimate import Estimate

Closed = Callable[[protocol.Usage], None]

log = logging.getLogger(__name__)

SETTLE_MARGIN_S = 5.0
"""How long a reservation is held past its request's deadline and report grace: time for the
settlement, sent off the response's path, to land."""
EXPIRE_EVERY_S = 1.0


class Ledger:
    def __init__(self, limits: Admission, usage: UsageStream) -> None:
        self.admission = limits
        self.usage = usage
        self._settling: set[asyncio.Task[None]] = set()
        self.held: set[Entry] = set()
        """Entries waiting for their worker's report."""
        self._abandoned: set[asyncio.Future[Decision]] = set()

    async def admit(
        self, caller: Principal, request_id: str, model: str, version: str, estimate: Estimate,
        hold_s: float,
    ) -> Entry:
        """The request's entry; ``entry.decision.allowed`` is false when the limits refuse it
        (nothing is reserved then, and closing it bills nothing). ``AdmissionUnavailable``
        when the store of counters does not answer. ``hold_s``: how long the request may last
        (its deadline and the grace for its worker's report), from now."""
        admitting = asyncio.ensure_future(self.admission.admit(
            caller, request_id, estimate.total, hold_s + SETTLE_MARGIN_S))
        try:
            decision = await asyncio.shield(admitting)
        except asyncio.CancelledError:  # the request is gone: give back what gets reserved
            self._abandoned.add(admitting)
            admitting.add_done_callback(self._refund)
            raise
        return Entry(self, caller, request_id, model, version, estimate, decision)

    def _refund(self, admitting: asyncio.Future[Decision]) -> None:
        self._abandoned.discard(admitting)
        if admitting.cancelled() or admitting.exception() is not None:
            return
        reservation = admitting.result().reservation
        if reservation is not None:
            self.settle(reservation, 0)

    async def drain(self) -> None:
        """Close held entries now and wait for the settlements under way (on shutdown)."""
        if self._abandoned:
            await asyncio.gather(*self._abandoned, return_exceptions=True)
        for entry in list(self.held):
            entry.expire()
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def expire_held(self) -> None:
        """Every ``EXPIRE_EVERY_S``, return the reservations held past their hold (left by a
        gateway that died); runs until cancelled, through outages of the admission's store."""
        failing = False
        while True:
            try:
                returned = await self.admission.expire()
            except Exception as error:
                if not failing:
                    log.warning("returning expired reservations failed (%s); retrying", error)
                failing = True
            else:
                failing = False
                if returned:
                    log.info("returned %d reservations no gateway settled in their hold",
                             returned)
            await asyncio.sleep(EXPIRE_EVERY_S)

    def settle(self, reservation: Reservation, used: int) -> None:
        """Replace ``reservation`` with ``used`` tokens, in the background."""
        settling = asyncio.create_task(self.admission.settle(reservation, used),
                                       name=f"settle-{reservation.request_id}")
        self._settling.add(settling)
        settling.add_done_callback(self._settling.discard)


class Entry:
    def __init__(
        self, ledger: Ledger, caller: Principal, request_id: str, model: str, version: str,
        estimate: Estimate, decision: Decision,
    ) -> None:
        self.ledger = ledger
        self.caller = caller
        self.request_id = request_id
        self.model = model
        self.version = version
        self.estimate = estimate
        self.decision = decision
        self.closed = not decision.allowed
        self._held: _Hold | None = None

    def close(self, status: int, usage: protocol.Usage, latency_s: float) -> None:
        """Bill ``usage`` and settle the reservation with it; once (later calls do nothing)."""
        if self.closed:
            return
        self.closed = True
        self.ledger.usage.emit(UsageEvent(
            event_id=self.request_id, token_id=self.caller.token_id, user_id=self.caller.user_id,
            model=self.model, version=self.version, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, latency_ms=round(latency_s * 1000),
            status=status, at=time.time(),
        ))
        reservation = self.decision.reservation
        if reservation is not None and (reservation.held
                                        or usage.total_tokens != reservation.tokens):
            self.ledger.settle(reservation, usage.total_tokens)

    def hold(
        self, status: int, latency_s: float, known: protocol.Usage, grace_s: float,
        closed: Closed,
    ) -> None:
        """Wait up to ``grace_s`` for the worker's ``report``; then bill ``known``. ``closed``
        is called with what was billed."""
        if self.closed or self._held is not None:
            return
        timer = asyncio.get_running_loop().call_later(grace_s, self.expire)
        self._held = _Hold(status, latency_s, known, closed, timer)
        self.ledger.held.add(self)

    def report(self, produced: protocol.Usage) -> None:
        """The worker's account of a held request: the prompt (the estimate when the worker
        stopped before counting it) and the tokens it generated (at least what the client
        got)."""
        if self._held is not None:
            self._release(protocol.Usage(
                produced.prompt_tokens or self.estimate.prompt_tokens,
                max(produced.completion_tokens, self._held.known.completion_tokens),
            ))

    def expire(self) -> None:
        """The grace period is over (or the gateway stops): bill what the gateway knew."""
        if self._held is not None:
            self._release(self._held.known)

    def _release(self, usage: protocol.Usage) -> None:
        held, self._held = self._held, None
        assert held is not None
        held.timer.cancel()
        self.ledger.held.discard(self)
        self.close(held.status, usage, held.latency_s)
        held.closed(usage)


@dataclass(frozen=True, slots=True)
class _Hold:
    """A held entry's end, kept until the worker reports or the grace period is over."""

    status: int
    latency_s: float
    known: protocol.Usage
    closed: Closed
    timer: asyncio.TimerHandle
