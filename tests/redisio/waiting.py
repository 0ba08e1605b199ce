"""Waiting on what a test cannot be handed an event for: a log line, another process's state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator


@contextlib.contextmanager
def logged(logger: str, text: str) -> Iterator[asyncio.Event]:
    """An event set when ``logger`` logs a record whose message contains ``text``."""
    seen = asyncio.Event()
    loop = asyncio.get_running_loop()

    class _Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                loop.call_soon_threadsafe(seen.set)

    target = logging.getLogger(logger)
    handler, level = _Watch(logging.DEBUG), target.level
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    try:
        yield seen
    finally:
        target.removeHandler(handler)
        target.setLevel(level)


async def until(check: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> None:
    """Poll ``check`` until it holds (fails the test after ``within_s``)."""
    give_up = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < give_up, f"not within {within_s} s"
        await asyncio.sleep(0.02)
