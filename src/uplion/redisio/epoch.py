"""Knowing when Redis lost its data: the epoch key.

A Redis without persistence (or whose disk was lost) that restarts comes back empty: tasks,
replies and usage events written before are gone, and nothing says so. Every uplion component
that writes such data also sets ``uplion:epoch`` to a random value if it is absent (``SET NX
GET``: one command, answered with the value already there). The value lives as long as the
data: while it stays the same, Redis kept what it was given; once it differs from the value a
writer saw with its writes, everything written before is gone. A Redis that restarts with its
data keeps the key, so only a real loss changes it.

``Epoch`` is one process's view: ``observe(value)`` with the value a command answered says
whether it differs from the one seen before (the first value seen is the baseline), and counts
the changes in ``generation``; ``claim(redis)`` runs the command itself. Scripts read the key
themselves with the same ``SET NX GET`` (``KEY`` and ``proposal()`` are their arguments).
"""

from __future__ import annotations

import uuid
from typing import cast

from redis.asyncio import Redis

__all__ = ["KEY", "Epoch", "proposal"]

KEY = "uplion:epoch"


def proposal() -> str:
    """A fresh value for the key, used only if the key is absent."""
    return uuid.uuid4().hex


def answered(previous: bytes | str | None, proposed: str) -> str:
    """The key's value after ``SET KEY proposed NX GET`` answered ``previous``."""
    if previous is None:
        return proposed
    return previous.decode() if isinstance(previous, bytes) else previous


class Epoch:
    """The epoch this process last saw; see the module docstring."""

    def __init__(self) -> None:
        self.value: str | None = None
        self.generation = 0
        """How many times the epoch changed (Redis lost its data) since this process first saw
        it."""

    def observe(self, value: str) -> bool:
        """Record ``value`` as the current epoch; True when it replaced a different one."""
        changed = self.value is not None and value != self.value
        if changed:
            self.generation += 1
        self.value = value
        return changed

    async def claim(self, redis: Redis) -> bool:
        """Read the epoch (setting it when absent) and ``observe`` it."""
        proposed = proposal()
        previous = await redis.set(KEY, proposed, nx=True, get=True)
        return self.observe(answered(cast(bytes | None, previous), proposed))
