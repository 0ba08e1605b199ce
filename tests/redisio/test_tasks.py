"""Stopping tasks: a cancellation swallowed once (as redis-py sometimes does) is sent again."""

from __future__ import annotations

import asyncio

from uplion import redisio


async def test_cancel_repeats_until_every_task_has_ended() -> None:
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()  # and goes on as if nothing happened
        await asyncio.Event().wait()

    async def done() -> None:
        return None

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(done())]
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await redisio.cancel(*tasks)
    assert swallowed.is_set()
    assert tasks[0].cancelled()
    assert tasks[1].done()
    assert not tasks[1].cancelled()
