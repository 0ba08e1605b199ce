"""Reading an engine's text stream in tests, and watching its generation threads end."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator

from uplion.worker.engines import base, hf_generation


async def collect(stream: AsyncIterator[base.TextDelta]) -> list[base.TextDelta]:
    return [delta async for delta in stream]


def text_of(deltas: list[base.TextDelta]) -> str:
    return "".join(delta.text for delta in deltas)


def generation_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(hf_generation.THREAD_PREFIX)}


def wait_until_gone(threads: set[threading.Thread], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "generation kept running"
