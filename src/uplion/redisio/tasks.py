"""Stopping tasks that talk to Redis: cancel, and cancel again until they end.

redis-py 8.1 on Python 3.11 now and then swallows a cancellation that lands while a read with a
timeout completes (about once in a hundred cancels of a blocked XREAD); the task then goes on
reading as if nothing happened, and whoever waits for it waits for ever. ``cancel`` repeats the
cancellation until every task has ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel"]

_AGAIN_S = 0.5


async def cancel(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until each has ended (whatever it ended with)."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=_AGAIN_S)
