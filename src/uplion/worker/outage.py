"""Waiting out a broker that cannot be reached: jittered exponential backoff, logged once.

A worker keeps its loaded model through an outage: it retries every broker call with backoff
(each loop its own ``Backoff``) and says so once when the outage begins and once when it ends,
however many retries fail in between.
"""

from __future__ import annotations

import logging
import time

from uplion import backoff

FIRST_S = 0.05
CAP_S = 2.0


class Backoff(backoff.Backoff):
    """uplion's backoff (``uplion.backoff``), quicker than the default: a worker idle on its
    broker is a model nobody is served by."""

    def __init__(self) -> None:
        super().__init__(FIRST_S, CAP_S)


class Outage:
    """Whether the broker is down, as one worker sees it."""

    def __init__(self, log: logging.Logger, worker: str) -> None:
        self._log = log
        self._worker = worker
        self._since: float | None = None

    def failed(self, doing: str, error: Exception) -> None:
        """A broker call failed: the first failure of an outage is a warning, the rest debug."""
        if self._since is None:
            self._since = time.monotonic()
            self._log.warning(
                "worker %s: the broker is unreachable (%s: %s, while trying to %s); retrying "
                "with backoff, the model stays loaded", self._worker, type(error).__name__,
                error, doing,
            )
        else:
            self._log.debug("worker %s: still unreachable (%s)", self._worker, error)

    def over(self) -> None:
        """A broker call succeeded: an outage under way has ended."""
        if self._since is not None:
            self._log.info("worker %s: the broker is reachable again after %.1f s",
                           self._worker, time.monotonic() - self._since)
            self._since = None
