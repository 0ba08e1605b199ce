"""Reading an engine's text stream in tests, and watching its generations end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from uplion.worker.engines import base, hf_batching


async def collect(stream: AsyncIterator[base.TextDelta]) -> list[base.TextDelta]:
    return [delta async for delta in stream]


def text_of(deltas: list[base.TextDelta]) -> str:
    return "".join(delta.text for delta in deltas)


def batch_of(engine: Any) -> hf_batching.BatchGenerator:
    """The continuous batch of a loaded transformers engine serving a causal LM."""
    generator = engine._generator
    assert isinstance(generator, hf_batching.BatchGenerator)
    return generator


def wait_until_idle(engine: Any, within_s: float = 10.0) -> None:
    """Wait until the engine's batch holds no generation."""
    assert batch_of(engine).idle.wait(within_s), "generation kept running"
