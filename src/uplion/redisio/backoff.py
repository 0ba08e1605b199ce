"""The one backoff policy of uplion's long-running loops (readers, followers, senders).

A loop that fails waits ``delay`` and doubles it up to ``MAX_S``; its first success resets it.
"""

from __future__ import annotations

import asyncio

FIRST_S = 0.1
MAX_S = 5.0


class Backoff:
    """Waits between tries: ``FIRST_S``, doubling up to ``MAX_S``; ``reset`` after a success."""

    def __init__(self, first_s: float = FIRST_S, max_s: float = MAX_S) -> None:
        if not 0 < first_s <= max_s:
            raise ValueError("a backoff needs 0 < first_s <= max_s")
        self._first_s = first_s
        self._max_s = max_s
        self.delay = first_s
        """What the next ``wait`` sleeps (seconds)."""

    async def wait(self) -> None:
        """Sleep ``delay``, then double it (up to the maximum)."""
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self._max_s)

    def reset(self) -> None:
        self.delay = self._first_s
