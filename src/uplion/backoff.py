"""The one backoff policy of uplion's long-running loops (readers, followers, senders, workers).

A loop that fails waits, then tries again: ``FIRST_S`` the first time, doubling up to ``MAX_S``;
its first success resets it. Each wait is drawn from the upper half of its step (jitter), so the
many processes that lost the same server do not all come back in the same millisecond.
"""

from __future__ import annotations

import asyncio
import random

FIRST_S = 0.1
MAX_S = 5.0


class Backoff:
    """Waits between tries; see the module docstring."""

    def __init__(self, first_s: float = FIRST_S, max_s: float = MAX_S) -> None:
        if not 0 < first_s <= max_s:
            raise ValueError("a backoff needs 0 < first_s <= max_s")
        self._first_s = first_s
        self._max_s = max_s
        self.delay = first_s
        """The step of the next wait (seconds): the wait is drawn from its upper half."""

    def next(self) -> float:
        """The next wait (seconds), and the step after it doubled (up to the maximum)."""
        wait = random.uniform(self.delay / 2, self.delay)
        self.delay = min(self.delay * 2, self._max_s)
        return wait

    async def wait(self) -> None:
        """Sleep the next wait."""
        await asyncio.sleep(self.next())

    def reset(self) -> None:
        self.delay = self._first_s
