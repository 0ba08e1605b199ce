"""The test-echo engine, counting the text deltas it produced, with an event after the first few."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from uplion.worker.engines import base
from uplion.worker.engines.echo import EchoEngine


class CountingEcho(EchoEngine):
    def __init__(self, token_delay_s: float, after: int = 3) -> None:
        super().__init__(token_delay_s=token_delay_s)
        self.after = after
        self.produced = 0
        self.reached = asyncio.Event()

    async def _words(
        self, text: str, prompt_tokens: int, params: base.GenerationParams
    ) -> AsyncIterator[base.TextDelta]:
        async for delta in super()._words(text, prompt_tokens, params):
            if delta.finish_reason is None:
                self.produced += 1
                if self.produced >= self.after:
                    self.reached.set()
            yield delta
